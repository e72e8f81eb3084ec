"""FAT's own mechanisms against independent references, and its field-importance analysis."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ctrscale.cli import main
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.fat import FAT, projection_parameters, route
from ctrscale.models.registry import build_model


def _batch(data, n=32, max_len=12):
    return next(iter(Loader(data, "train", LoaderConfig(batch_size=n, max_len=max_len, shuffle=True), seed=2)))


def _fat(data, seed=0, **cfg) -> FAT:
    torch.manual_seed(seed)
    return build_model(data.spec, {"name": "fat", "dim": 16, "heads": 2, **cfg}).eval()


def test_top_k_routing_keeps_the_largest_logits():
    logits = torch.randn(7, 16)
    w = route(logits, 3)
    expected = np.argsort(-logits.numpy(), axis=1)[:, :3]
    for row, top in zip(w.numpy(), expected):
        assert set(np.flatnonzero(row)) == set(top)
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, rtol=1e-6)
    kept = torch.gather(logits, 1, torch.as_tensor(expected))
    torch.testing.assert_close(torch.gather(w, 1, torch.as_tensor(expected)), kept.softmax(-1))


def test_frozen_generated_matrices_equal_the_generated_ones_and_skip_the_hypernetwork(tiny):
    model = _fat(tiny)
    b = _batch(tiny)
    with torch.no_grad():
        before = model(b)
        generated = [blk.att.proj.hyper(model.meta) for blk in model.blocks]
        model.freeze_generated()
        for blk, g in zip(model.blocks, generated):
            torch.testing.assert_close(blk.att.proj.cached, g, rtol=0, atol=0)
            blk.att.proj.hyper.bases.fill_(float("nan"))        # the hypernetwork is no longer evaluated
        torch.testing.assert_close(model(b), before, rtol=0, atol=0)


def test_generated_matrix_is_the_routed_sum_of_bases(tiny):
    model = _fat(tiny)
    hyper = model.blocks[0].att.proj.hyper
    w = hyper.routing(model.meta)                                             # (3, F, M)
    f, kind = 2, 1                                                            # field 2's W_K
    by_hand = sum(w[kind, f, m] * hyper.bases[kind, m] for m in range(hyper.bases.shape[1]))
    d = by_hand.shape[0]
    torch.testing.assert_close(hyper(model.meta)[f][:, kind * d:(kind + 1) * d], by_hand)


def _copy_into_torch_layer(block, d, heads, ffn) -> nn.TransformerEncoderLayer:
    ref = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, activation="gelu", batch_first=True,
                                     norm_first=True).eval()
    w = block.att.proj.weight                                                 # (d, 3d), used as h @ w
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(w.t())
        ref.self_attn.in_proj_bias.zero_()
        ref.self_attn.out_proj.load_state_dict(block.att.out.state_dict())
        ref.linear1.load_state_dict(block.ffn[0].state_dict())
        ref.linear2.load_state_dict(block.ffn[2].state_dict())
        ref.norm1.load_state_dict(block.norm_att.state_dict())
        ref.norm2.load_state_dict(block.norm_ffn.state_dict())
    return ref


def test_alpha_one_and_shared_projections_are_a_standard_transformer(tiny):
    """FAT with alpha = 1, shared W_Q/W_K/W_V and no field bias equals torch's own pre-norm encoder layers."""
    model = _fat(tiny, projections="shared", alpha="shared", field_bias=False, layers=2)
    with torch.no_grad():
        for blk in model.blocks:
            blk.att.alpha.fill_(1.0)
    z = torch.randn(5, model.tokens.n_tokens, 16)
    ours, ref = z, z
    for blk in model.blocks:
        ours = blk(ours, model.meta)
        ref = _copy_into_torch_layer(blk, 16, 2, 32)(ref)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    plain = build_model(tiny.spec, {"name": "transformer", "dim": 16, "heads": 2})
    assert plain.cfg.projections == "shared" and plain.cfg.alpha == "none" and plain.field_bias is None


def test_equal_per_field_matrices_reduce_to_shared_and_pair_reduces_to_per_field(tiny):
    b = _batch(tiny)
    shared = _fat(tiny, projections="shared")
    full = _fat(tiny, projections="full")
    pair = _fat(tiny, projections="pair")
    full.load_state_dict({k: v for k, v in shared.state_dict().items() if "proj.weight" not in k}, strict=False)
    pair.load_state_dict({k: v for k, v in shared.state_dict().items() if "proj.weight" not in k}, strict=False)
    with torch.no_grad():
        for s, f, p in zip(shared.blocks, full.blocks, pair.blocks):
            n = f.att.proj.weight.shape[0]
            per_field = torch.randn(n, 16, 48) / 4                            # distinct matrices per field
            f.att.proj.weight.copy_(per_field)
            # W^(i, j) = [W_Q^(i) | W_K^(j) | W_V^(j)] makes the naive pair attention the per-field one
            p.att.proj.weight.copy_(torch.cat([per_field[:, None, :, :16].expand(n, n, 16, 16),
                                               per_field[None, :, :, 16:].expand(n, n, 16, 32)], -1))
        torch.testing.assert_close(pair(b), full(b), rtol=1e-5, atol=1e-5)
        for s, f in zip(shared.blocks, full.blocks):
            f.att.proj.weight.copy_(s.att.proj.weight.expand_as(f.att.proj.weight))
        torch.testing.assert_close(full(b), shared(b), rtol=1e-5, atol=1e-5)


def test_per_head_alpha_equal_across_heads_equals_shared_alpha(tiny):
    b = _batch(tiny)
    shared, per_head = _fat(tiny, alpha="shared"), _fat(tiny, alpha="per_head")
    state = shared.state_dict()
    for k in [k for k in state if k.endswith("att.alpha")]:
        state[k] = state[k].expand(2, -1, -1).clone()
    per_head.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(per_head(b), shared(b))
        per_head.blocks[0].att.alpha[1, 0, 1] += 5.0                          # one head's pair moves the output
        assert not torch.allclose(per_head(b), shared(b))


def test_alpha_scales_exactly_its_own_field_pair(tiny):
    model = _fat(tiny, projections="full")
    att = model.blocks[0].att
    h = torch.randn(3, model.tokens.n_tokens, 16)
    q, k, _ = att.proj(h, None)
    with torch.no_grad():
        att.alpha.fill_(1.0)
        base = att.scores(q, k)
        att.alpha[0, 1, 4] = 3.0
        moved = att.scores(q, k)
    expected = base.clone()
    expected[:, :, 1, 4] *= 3.0
    torch.testing.assert_close(moved, expected)


def test_projection_parameter_formula_matches_built_models(tiny):
    for mode in ("shared", "full", "pair", "hyper"):
        hyper = dict(bases=4, meta_dim=8, router_hidden=12) if mode == "hyper" else {}  # no effect elsewhere
        model = _fat(tiny, projections=mode, layers=2, **hyper)
        counted = sum(p.numel() for n, p in model.named_parameters() if ".proj." in n or n == "meta")
        assert counted == projection_parameters(mode, model.tokens.n_tokens, 16, 2, bases=4, meta_dim=8,
                                                router_hidden=12), mode
    # at the paper's scale the naive field-pair projections explode, the hypernetwork stays near one layer's worth
    full, pair, hyper = (projection_parameters(m, 300, 256, 4) for m in ("full", "pair", "hyper"))
    assert pair == 300 * full and hyper < full / 10


def test_analyze_fields_cli_on_a_trained_fat(tmp_path, capsys):
    assert main(["train", "name=fat", f"out_dir={tmp_path}", "model.name=fat", "model.dim=16", "model.heads=2",
                 "data.name=synthetic", "data.options={impressions: 20000}", "train.epochs=1",
                 "train.progress=false", "data.max_len=20", "train.threads=2"]) == 0
    run = tmp_path / "fat"
    assert main(["eval", str(run)]) == 0                                      # serving path: frozen matrices
    assert main(["analyze", "fields", str(run), "--top", "5"]) == 0
    out = run / "analysis"
    assert (out / "alpha.png").stat().st_size > 1000
    report = json.loads((out / "fields.json").read_text())
    alpha = np.asarray(report["alpha"]).mean(0)
    names = report["fields"]
    assert alpha.shape == (len(names), len(names)) and "history" in names
    i, j = np.triu_indices(len(names), 1)
    assert report["asymmetric"][0]["difference"] == pytest.approx(np.abs(alpha[i, j] - alpha[j, i]).max())
    top = report["asymmetric"][0]
    assert top["alpha"] - top["reverse"] == pytest.approx(top["difference"])
    assert report["strongest"][0]["alpha"] == pytest.approx(alpha[~np.eye(len(names), dtype=bool)].max())
    assert "| query field |" in capsys.readouterr().out
    plain = tmp_path / "plain"                                                # a run without learned alpha
    plain.mkdir()
    config = (run / "config.yaml").read_text()
    (plain / "config.yaml").write_text(config.replace("  alpha: shared", "  alpha: none"))
    assert main(["analyze", "fields", str(plain)]) == 2  # one line, no traceback
    assert "learned alpha" in capsys.readouterr().err
