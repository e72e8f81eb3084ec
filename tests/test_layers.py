"""Mechanisms of the shared layers and the baselines, against explicit references."""
from __future__ import annotations

import torch

from ctrscale.models.layers import TargetAttention, masked_mean, masked_softmax
from ctrscale.models.tables import FeatureEmbedding


def test_masked_mean_and_softmax_against_loops():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 6, 3), torch.rand(4, 6) > 0.5
    mask[0] = False
    got = masked_mean(x, mask, dim=1)
    for b in range(4):
        ref = x[b][mask[b]].mean(0) if mask[b].any() else torch.zeros(3)
        torch.testing.assert_close(got[b], ref)
    s = masked_softmax(torch.randn(4, 6), mask)
    assert torch.equal(s[0], torch.zeros(6))
    torch.testing.assert_close(s[1:].sum(-1), torch.ones(3))
    assert (s[~mask] == 0).all()


def test_target_attention_fast_path_equals_reference_and_loop():
    torch.manual_seed(0)
    att = TargetAttention(8, (6, 4)).eval()
    q, keys, mask = torch.randn(3, 8), torch.randn(3, 5, 8), torch.rand(3, 5) > 0.4
    got = att(q, keys, mask)
    torch.testing.assert_close(got, att.reference(q, keys, mask), rtol=1e-5, atol=1e-6)
    soft = TargetAttention(8, (6, 4), softmax=True).eval()
    torch.testing.assert_close(soft(q, keys, mask), soft.reference(q, keys, mask), rtol=1e-5, atol=1e-6)
    for b in range(3):
        acc = torch.zeros(8)
        for j in range(5):
            if mask[b, j]:
                k = keys[b, j]
                w = att.mlp(torch.cat([q[b], k, q[b] - k, q[b] * k])).squeeze()
                acc = acc + w * k
        torch.testing.assert_close(got[b], acc, rtol=1e-5, atol=1e-6)


def test_behavior_fields_share_the_item_tables(tiny):
    spec = tiny.spec
    emb = FeatureEmbedding(spec, 4)
    i_item = spec.sparse.index("item_id")
    j_item = spec.hist.index("item_id")
    ids = torch.randint(2, spec.vocab_sizes["item_id"], (5,))
    sparse = torch.zeros(5, len(spec.sparse), dtype=torch.long)
    sparse[:, i_item] = ids
    as_beh = emb.candidate_as_behavior(sparse)                 # (5, F_hist, d)
    hist = torch.zeros(5, 1, len(spec.hist), dtype=torch.long)
    hist[:, 0, j_item] = ids
    torch.testing.assert_close(as_beh[:, j_item], emb.hist(hist)[:, 0, j_item])
    torch.testing.assert_close(as_beh[:, j_item], emb.sparse(sparse)[:, i_item])
    # a behavior-only field (no candidate counterpart) is zero in the candidate's slots
    for j, a in enumerate(spec.hist_to_sparse):
        if a < 0:
            assert (as_beh[:, j] == 0).all()
    assert emb.hist(torch.zeros(1, 1, len(spec.hist), dtype=torch.long)).abs().sum() == 0  # padding embeds to 0


def test_bf16_autocast_path_runs_and_stays_close(tiny):
    """The recipe's bf16 autocast (used on GPUs) gives finite logits near fp32 ones; checked on CPU here."""
    from ctrscale.data.loader import Loader, LoaderConfig
    from ctrscale.models.registry import build_model, entries
    from ctrscale.train.recipe import autocast_for
    for name in entries():
        torch.manual_seed(0)
        model = build_model(tiny.spec, {"name": name}, content=tiny.content()).eval()
        cfg = LoaderConfig(batch_size=64, max_len=16, cand_seq=model.needs.cand_seq)
        b = next(iter(Loader(tiny, "valid", cfg)))
        with torch.no_grad(), autocast_for(torch.device("cpu"), "bf16"):
            low = model(b).float()
        with torch.no_grad():
            full = model(b)
        assert torch.isfinite(low).all()
        torch.testing.assert_close(low, full, atol=0.05, rtol=0.05)
