"""Wukong: its layer computes the unoptimised FM order's result."""
from __future__ import annotations

import torch

from ctrscale.models.registry import build_model


def test_wukong_layer_uses_the_optimised_fm(tiny):
    model = build_model(tiny.spec, {"name": "wukong", "fmb_tokens": 3, "lcb_tokens": 2, "layers": 2})
    layer = model.layers[0]
    x = torch.randn(4, model.inputs.n_tokens, model.cfg.dim)
    fm = torch.einsum("bnd,bmd->bnm", x, x) @ layer.y                         # X X^T Y, the unoptimised order
    fmb = layer.fmb(layer.fm_norm(fm.flatten(1))).view(4, 3, -1)
    lcb = torch.einsum("ln,bnd->bld", layer.lcb.weight, x)
    res = torch.einsum("on,bnd->bod", layer.residual.weight, x)
    torch.testing.assert_close(layer(x), layer.norm(torch.cat([fmb, lcb], 1) + res), rtol=1e-5, atol=1e-5)
    assert model.layers[1](layer(x)).shape == (4, 5, model.cfg.dim)
