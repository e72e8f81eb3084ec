"""EST's own mechanisms: CSA against its dense reference, the content pattern computed once for all layers,
SimTier against numpy, the Full-Attention variant's block masks (LCA: test_attention.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models import content as content_mod
from ctrscale.models.content import content_topk, csa_apply, csa_reference, simtier
from ctrscale.models.registry import build_model


def _est(data, seed=0, **cfg):
    torch.manual_seed(seed)
    return build_model(data.spec, {"name": "est", "dim": 16, "heads": 2, **cfg}, content=data.content()).eval()


def _batch(data, model, n=48, max_len=20, split="valid", listwise=False):
    cfg = LoaderConfig(batch_size=n, max_len=max_len, listwise=listwise, cand_seq=model.needs.cand_seq)
    return next(iter(Loader(data, split, cfg, seed=2)))


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_content_topk_equals_brute_force():
    torch.manual_seed(0)
    vecs, mask = _unit(torch.randn(3, 12, 6)), torch.rand(3, 12) > 0.3
    mask[2] = False                      # an empty sequence
    mask[1, :] = False
    mask[1, 4:6] = True                  # two behaviors: each has one neighbour
    idx, w = content_topk(vecs, mask, k=4, tau=0.1)
    for b in range(3):
        for i in range(12):
            if not mask[b, i]:
                assert (w[b, i] == 0).all()
                continue
            others = [j for j in range(12) if j != i and mask[b, j]]
            sims = torch.stack([vecs[b, i] @ vecs[b, j] for j in others]) if others else torch.zeros(0)
            best = sorted(range(len(others)), key=lambda t: -sims[t])[:4]
            want = torch.zeros(12)
            if best:
                want[[others[t] for t in best]] = torch.softmax(sims[best] / 0.1, 0)
            got = torch.zeros(12).index_add_(0, idx[b, i], w[b, i])
            torch.testing.assert_close(got, want)


def test_csa_gather_equals_dense_reference():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 10, 8, requires_grad=True)
    vecs, mask = _unit(torch.randn(2, 3, 10, 5)), torch.rand(2, 3, 10) > 0.2
    idx, w = content_topk(vecs, mask, k=3, tau=0.2)
    fast, ref = csa_apply(x, idx, w), csa_reference(x, idx, w)
    torch.testing.assert_close(fast, ref)
    g_fast, = torch.autograd.grad(fast.square().sum(), x)
    g_ref, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g_fast, g_ref)


def test_simtier_equals_numpy_histogram():
    torch.manual_seed(2)
    cand, beh = _unit(torch.randn(4, 7)), _unit(torch.randn(4, 9, 7))
    mask = torch.rand(4, 9) > 0.4
    mask[3] = False
    got = simtier(cand, beh, mask, bins=10)
    for b in range(4):
        cos = (beh[b] @ cand[b])[mask[b]].numpy()
        want = np.histogram(np.clip(cos, -1, 1 - 1e-7), bins=10, range=(-1, 1))[0] / max(1, mask[b].sum().item())
        np.testing.assert_allclose(got[b].numpy(), want, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 3])
def test_content_pattern_computed_once_for_all_layers(tiny, layers, monkeypatch):
    model = _est(tiny, layers=layers)
    b = _batch(tiny, model)
    calls = []
    real = content_mod.content_topk

    def counted(*args, **kw):
        calls.append(args[0].shape)
        return real(*args, **kw)
    monkeypatch.setattr("ctrscale.models.est.content_topk", counted)
    model(b)
    assert len(calls) == 2  # R_u once and R_c once, whatever the depth


def test_lca_only_and_full_attention_ignore_csa(tiny):
    """attention='lca' is EST without CSA: its output does not depend on the content pattern's neighbours."""
    model = _est(tiny, attention="lca", simtier_bins=0)
    b = _batch(tiny, model)
    base = model(b)
    table = model.inputs.content.content
    table.copy_(_unit(torch.randn_like(table)))  # other neighbours everywhere
    torch.testing.assert_close(model(b), base)


def test_full_attention_with_only_n_to_s_equals_lca(tiny):
    """Masking N->N, S->N and S->S leaves N tokens attending to behaviors alone and behaviors untouched by
    attention: exactly LCA, with the same weights."""
    full = _est(tiny, attention="full", seed=4)
    light = _est(tiny, attention="lca", seed=5)
    light.load_state_dict(full.state_dict(), strict=False)
    b = _batch(tiny, full)
    full.masked_blocks = frozenset({"N->N", "S->N", "S->S"})
    torch.testing.assert_close(full(b), light(b))
    full.masked_blocks = frozenset()
    assert not torch.allclose(full(b), light(b))


def test_full_attention_records_its_maps(tiny):
    model = _est(tiny, attention="full", layers=2)
    b = _batch(tiny, model, n=8)
    model.attention_log = []
    model(b)
    assert len(model.attention_log) == 2
    p = model.attention_log[0]
    t = model.n_tokens + b.hist.shape[1] + b.cand_hist.shape[1]
    assert p.shape == (8, 2, t, t)
    torch.testing.assert_close(p.sum(-1), torch.ones(8, 2, t))
    key_ok = torch.cat([torch.ones(8, model.n_tokens, dtype=torch.bool), b.hist_mask, b.cand_hist_mask], 1)
    assert (p.masked_select(~key_ok[:, None, None, :].expand_as(p)) == 0).all()


def test_request_scoring_reuses_the_user_side(tiny):
    """Many candidates of one request: cached R_u states give the same scores as each candidate alone."""
    model = _est(tiny, csa_value=True)
    rb = _batch(tiny, model, n=256, listwise=True)
    assert rb.num_candidates > 1
    with torch.no_grad():
        cached = model.score_request(rb)[rb.mask]
        alone = torch.cat([model(rb.flat().select(torch.tensor([i]))) for i in range(int(rb.mask.sum()))])
    torch.testing.assert_close(cached, alone, rtol=1e-5, atol=1e-5)


def test_missing_inputs_are_clear_errors(tiny):
    model = _est(tiny)
    plain = next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=8, max_len=10))))
    with pytest.raises(ValueError, match="candidate-specific behaviors"):
        model(plain)
    with pytest.raises(ValueError, match="content"):
        build_model(tiny.spec, {"name": "est"})


def test_candidate_chunks_give_the_same_scores(tiny, monkeypatch):
    model = _est(tiny)
    rb = _batch(tiny, model, n=256, listwise=True)
    with torch.no_grad():
        whole = model.score_request(rb)
        monkeypatch.setattr("ctrscale.models.est.SCORE_BUDGET", 1)  # one candidate per chunk
        chunked = model.score_request(rb)
    torch.testing.assert_close(chunked, whole)


def test_a_dataset_without_content_is_refused_saying_how_to_give_one(tiny):
    import dataclasses

    from ctrscale.errors import ConfigError
    from ctrscale.models.registry import build_model
    spec = dataclasses.replace(tiny.spec, content_dim=0, content_key=None)
    with pytest.raises(ConfigError) as e:
        build_model(spec, {"name": "est"})
    message = str(e.value)
    assert "content: {path: vectors.npy, dim: D, key: item_id}" in message and "row r is the vector" in message
    runs_without = message.split("runs without one: ")[1].split(", ")
    assert {"din", "suan", "sparsectr", "fat", "mlp"} <= set(runs_without) and "est" not in runs_without
