"""Mechanisms of the shared layers, against explicit references."""
from __future__ import annotations

import torch

from ctrscale.models.layers import masked_mean
from ctrscale.models.tables import FeatureEmbedding


def test_masked_mean_against_a_loop():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 6, 3), torch.rand(4, 6) > 0.5
    mask[0] = False
    got = masked_mean(x, mask, dim=1)
    for b in range(4):
        ref = x[b][mask[b]].mean(0) if mask[b].any() else torch.zeros(3)
        torch.testing.assert_close(got[b], ref)


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
    from ctrscale.train.device import autocast_for
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
