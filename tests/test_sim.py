"""SIM's own mechanisms: the multi-head ESU against a per-row, per-head loop; the time-interval buckets; the whole
model against a plain per-row reference; padding of R_u and R_c; hard search through the loader; the GSU
settings each search declares; empty R_c; request scoring of the soft variant."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ctrscale.batch import CandidateSequence, RequestBatch
from ctrscale.data.gsu import category_field
from ctrscale.models.attention import time_bucket
from ctrscale.models import sim as sim_mod
from ctrscale.models.registry import build_model, resolve
from ctrscale.models.sim import SIM, ExactSearchUnit
from ctrscale.typed import ConfigError
from model_testkit import batch as load_batch
from model_testkit import build, jitter

SMALL = dict(embed_dim=4, topk=6, heads=3, att_dim=5, hidden=(16,), attention_hidden=(8,))


def _sim(data, **cfg):
    return jitter(build(data, "sim", **{**SMALL, **cfg}))


def esu_loop(esu: ExactSearchUnit, e_a, z, mask):
    """Row by row, head by head: att_i = softmax_j((W_b,i z_j) . (W_a,i e_a)) over valid j, head_i = sum att z_j."""
    h = esu.heads
    wa, wb = esu.w_a.weight.chunk(h, 0), esu.w_b.weight.chunk(h, 0)      # head i: its own (A, D) projections
    out = torch.zeros(e_a.shape[0], h * z.shape[-1])
    for r in range(e_a.shape[0]):
        heads = []
        for i in range(h):
            valid = [j for j in range(z.shape[1]) if mask[r, j]]
            head = torch.zeros(z.shape[-1])
            if valid:
                q = wa[i] @ e_a[r]
                scores = torch.stack([(wb[i] @ z[r, j]) @ q for j in valid])
                att = torch.exp(scores - scores.max())
                att = att / att.sum()
                for w, j in zip(att, valid):
                    head = head + w * z[r, j]
            heads.append(head)
        out[r] = torch.cat(heads)
    return out


def test_esu_equals_a_per_row_per_head_loop():
    torch.manual_seed(0)
    esu = ExactSearchUnit(6, 9, heads=3, att_dim=4)
    e_a, z = torch.randn(5, 6), torch.randn(5, 7, 9)
    mask = torch.rand(5, 7) > 0.3
    mask[1] = False                       # empty R_c
    mask[2] = False
    mask[2, -1] = True                    # one behavior: all the weight on it
    got = esu(e_a, z, mask)
    torch.testing.assert_close(got, esu_loop(esu, e_a, z, mask), rtol=1e-5, atol=1e-6)
    assert (got[1] == 0).all()
    torch.testing.assert_close(got[2], z[2, -1].repeat(3))


def test_esu_heads_have_their_own_projections():
    """Changing head 1's W_a rows changes head 1's output only."""
    torch.manual_seed(1)
    esu = ExactSearchUnit(6, 9, heads=3, att_dim=4)
    e_a, z, mask = torch.randn(4, 6), torch.randn(4, 8, 9), torch.ones(4, 8, dtype=torch.bool)
    before = esu(e_a, z, mask).view(4, 3, 9)
    with torch.no_grad():
        esu.w_a.weight[4:8] += torch.randn(4, 6)
    after = esu(e_a, z, mask).view(4, 3, 9)
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    assert not torch.allclose(after[:, 1], before[:, 1])


def test_time_interval_buckets_are_time_bucket_of_request_minus_behavior_time(tiny):
    model = _sim(tiny)
    b = load_batch(tiny, model)
    d = len(tiny.spec.hist) * model.cfg.embed_dim
    z = model.behaviors(b.cand_hist, b.cand_hist_time, b.time)                       # (B, K, D + d)
    gaps = b.time[:, None] - b.cand_hist_time
    torch.testing.assert_close(z[..., d:], model.time_emb.weight[time_bucket(gaps)])
    torch.testing.assert_close(z[..., :d], model.emb.hist(b.cand_hist).flatten(-2))
    # the bucket itself, by hand: floor(ln(max(dt, 1)) / 0.301), clipped to [0, 128]
    for dt in (0, 1, 2, 3600, 86400 * 30):
        want = min(128, max(0, math.floor(math.log(max(dt, 1)) / 0.301)))
        assert time_bucket(torch.tensor([dt])).item() == want
    assert len({int(x) for x in time_bucket(gaps[b.cand_hist_time > 0])}) > 3  # real gaps span several buckets


def reference_forward(model, b):
    """SIM row by row from plain pieces: DIN's literal form over R_u, the per-head ESU loop over R_c with
    time_bucket-embedded gaps, the head MLP."""
    emb, out = model.emb, []
    for r in range(len(b)):
        keys = emb.hist(b.hist[r:r + 1]).flatten(-2)                                   # (1, L, D)
        query = emb.candidate_as_behavior(b.sparse[r:r + 1]).flatten(-2)               # (1, D)
        short = model.short.reference(query, keys, b.hist_mask[r:r + 1])
        z = torch.cat([emb.hist(b.cand_hist[r:r + 1]).flatten(-2),
                       model.time_emb(time_bucket(b.time[r] - b.cand_hist_time[r:r + 1]))], -1)
        long = esu_loop(model.esu, query, z, b.cand_hist_mask[r:r + 1])
        x = torch.cat([emb.flat(b.sparse[r:r + 1], b.dense[r:r + 1]), short, long], -1)
        out.append(model.head(x).squeeze(-1))
    return torch.cat(out)


@pytest.mark.parametrize("search", ["hard", "soft"])
def test_model_equals_a_per_row_reference(tiny, search):
    model = _sim(tiny, search=search)
    b = load_batch(tiny, model, n=12, max_len=9)
    with torch.no_grad():
        torch.testing.assert_close(model(b), reference_forward(model, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("search", ["hard", "soft"])
def test_padding_of_recent_and_retrieved_behaviors_is_ignored(tiny, search):
    model = _sim(tiny, search=search)
    b = load_batch(tiny, model, n=64, max_len=30)
    assert (~b.hist_mask).any() and (~b.cand_hist_mask).any()
    top = min(tiny.spec.vocab_sizes[tiny.spec.field_vocab[f"hist.{h}"]] for h in tiny.spec.hist)
    noisy = dataclasses.replace(
        b, hist=torch.where(b.hist_mask[..., None], b.hist, torch.randint(2, top, b.hist.shape)),
        cand_hist=torch.where(b.cand_hist_mask[..., None], b.cand_hist, torch.randint(2, top, b.cand_hist.shape)))
    with torch.no_grad():
        torch.testing.assert_close(model(noisy), model(b), rtol=0, atol=0)


def test_hard_search_retrieves_the_candidates_category(tiny):
    model = _sim(tiny, topk=8)
    b = load_batch(tiny, model, n=256, max_len=5)
    spec = tiny.spec
    field = spec.hist.index(category_field(spec))
    assert spec.hist[field] == "category"
    cand_cat = b.sparse[:, spec.hist_to_sparse[field]]                                   # (B,)
    valid = b.cand_hist_mask
    assert valid.sum() > len(b)                                                          # R_c is not empty
    assert (b.cand_hist[..., field][valid] == cand_cat[:, None].expand_as(valid)[valid]).all()
    # ... from the whole history: some retrieved behaviors are older than everything R_u (max_len 5) holds
    oldest_recent = b.hist_time.masked_fill(~b.hist_mask, 2 ** 62).min(1).values
    assert ((b.cand_hist_time > 0) & (b.cand_hist_time < oldest_recent[:, None])).any()


def test_each_search_declares_its_candidate_sequence():
    cfg = resolve({"name": "sim"}).config
    assert (cfg.search, cfg.topk, cfg.heads, cfg.embed_dim) == ("hard", 50, 4, 16)
    hard = SIM.needs_for(cfg)
    soft = SIM.needs_for(resolve({"name": "sim", "search": "soft", "topk": 20}).config)
    assert hard.cand_seq == CandidateSequence(length=50, by="category", source_len=0)
    assert soft.cand_seq == CandidateSequence(length=20, by="content", source_len=0)
    assert not hard.content and not soft.content and not hard.listwise
    with pytest.raises(ConfigError, match="search"):
        resolve({"name": "sim", "search": "mips"})


def test_empty_retrieved_sequence_gives_zero_long_term_interest_and_finite_logits(tiny):
    model = _sim(tiny)
    b = load_batch(tiny, model, n=16)
    empty = dataclasses.replace(b, cand_hist=torch.zeros_like(b.cand_hist),
                                cand_hist_time=torch.zeros_like(b.cand_hist_time))
    query = model.emb.candidate_as_behavior(b.sparse).flatten(-2)
    z = model.behaviors(empty.cand_hist, empty.cand_hist_time, b.time)
    assert (model.esu(query, z, empty.cand_hist_mask) == 0).all()
    with torch.no_grad():
        out = model(empty)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_forward(model, empty), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("search", ["hard", "soft"])
def test_request_scoring_equals_pointwise_in_chunks(tiny, search, monkeypatch):
    model = _sim(tiny, search=search)
    rb = load_batch(tiny, model, n=128, listwise=True)
    assert isinstance(rb, RequestBatch) and rb.num_candidates > 2
    with torch.no_grad():
        pointwise = model(rb.flat())
        whole = model.score_request(rb)[rb.mask]
        monkeypatch.setattr(sim_mod, "SCORE_BUDGET", 1)                   # one candidate per chunk
        chunked = model.score_request(rb)[rb.mask]
    torch.testing.assert_close(whole, pointwise, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_soft_search_builds_without_a_content_buffer(tiny):
    """The soft model reads the content table only through the GSU: built with none, it runs on loaded R_c."""
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "sim", "search": "soft", **SMALL}).eval()
    b = load_batch(tiny, model, n=8)
    assert not any("content" in n for n, _ in model.named_buffers())
    assert torch.isfinite(model(b)).all()
