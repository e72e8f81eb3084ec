"""Mechanisms of the shared layers, against explicit references."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from ctrscale.models.layers import ACTIVATIONS, MLP, Dice, masked_mean
from ctrscale.models.tables import FeatureEmbedding
from model_testkit import batch, build


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


def test_dice_against_its_formula_with_valid_row_statistics():
    """Training mode: the batch mean and (biased) variance of the valid rows only, eps 1e-5; the running
    statistics move by momentum 0.1 toward the valid rows' (unbiased) variance; eval reads them."""
    torch.manual_seed(0)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.2, -0.5, 1.0]))
    x, mask = torch.randn(4, 5, 3) * 3 + 1, torch.rand(4, 5) > 0.4
    got = dice(x, mask)
    v = x[mask]
    p = torch.sigmoid((v - v.mean(0)) / torch.sqrt(v.var(0, unbiased=False) + 1e-5))
    torch.testing.assert_close(got[mask], p * v + (1 - p) * dice.alpha * v)
    assert (got[~mask] == 0).all()
    torch.testing.assert_close(dice.bn.running_mean, 0.1 * v.mean(0))
    torch.testing.assert_close(dice.bn.running_var, 0.9 + 0.1 * v.var(0, unbiased=True))
    dice.eval()
    q = torch.sigmoid((v - dice.bn.running_mean) / torch.sqrt(dice.bn.running_var + 1e-5))
    torch.testing.assert_close(dice(x, mask)[mask], q * v + (1 - q) * dice.alpha * v)
    torch.testing.assert_close(dice(x)[mask], dice(x, mask)[mask])  # eval: no batch statistics to mask


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_an_mlp_over_any_leading_dims(name):
    torch.manual_seed(0)
    mlp = MLP(6, (5, 4), 1, activation=name)
    x = torch.randn(3, 7, 6)
    out = mlp(x)
    assert out.shape == (3, 7, 1) and torch.isfinite(out).all()
    torch.testing.assert_close(mlp.masked(x, torch.ones(3, 7, dtype=torch.bool)), out)


def test_din_with_dice_attention_ignores_padding_in_training_mode(tiny):
    """FuxiCTR's DIN uses Dice in its attention MLP; its batch statistics must not see the padded behaviors, or
    what sits in padding would change a real row's score during training (and the running statistics)."""
    model = build(tiny, "din", attention_activation="dice", activation="dice").train()
    twin = copy.deepcopy(model)
    b = batch(tiny, model, n=32, max_len=20)
    time = b.hist_time.clone()
    time[:8, :6] = 0                                       # left padding in some rows
    b = dataclasses.replace(b, hist_time=time)
    noisy = b.hist.clone()
    real = b.hist[b.hist_mask]                             # real behaviors' ids, put where padding is
    noisy[~b.hist_mask] = real[torch.randint(0, len(real), ((~b.hist_mask).sum(),))]
    clean, moved = model(b), twin(dataclasses.replace(b, hist=noisy))
    torch.testing.assert_close(moved, clean)
    dice = [(m, t) for m, t in zip(model.modules(), twin.modules()) if isinstance(m, Dice)]
    assert len(dice) == 4 and any(isinstance(m, Dice) for m in model.attention.mlp)
    for m, t in dice:
        torch.testing.assert_close(m.bn.running_mean, t.bn.running_mean)
        torch.testing.assert_close(m.bn.running_var, t.bn.running_var)
