"""DCNv2: the cross layer against its formula (full and low rank) and the two wirings."""
from __future__ import annotations

import pytest
import torch

from ctrscale.models.dcnv2 import CrossLayer

from model_testkit import batch, build, jitter


def test_cross_layer_equals_the_formula():
    torch.manual_seed(0)
    layer = jitter(CrossLayer(5))
    x0, x = torch.randn(3, 5), torch.randn(3, 5)
    w, b = layer.w.weight, layer.w.bias
    want = torch.empty(3, 5)
    for n in range(3):
        for i in range(5):  # x_{l+1,i} = x0_i * (sum_j W_ij x_j + b_i) + x_i
            want[n, i] = x0[n, i] * (sum(w[i, j] * x[n, j] for j in range(5)) + b[i]) + x[n, i]
    torch.testing.assert_close(layer(x0, x), want)


def test_low_rank_cross_layer_equals_full_rank_with_w_equal_u_vt():
    torch.manual_seed(1)
    low = jitter(CrossLayer(6, rank=2))
    full = CrossLayer(6)
    u, vt = low.w.weight, low.v.weight                  # (6, 2), (2, 6)
    with torch.no_grad():
        full.w.weight.copy_(u @ vt)
        full.w.bias.copy_(low.w.bias)
    x0, x = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(low(x0, x), full(x0, x))
    assert sum(p.numel() for p in low.parameters()) == 2 * 6 * 2 + 6


@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_dcnv2_wiring(tiny, structure):
    """Cross layers on x0 = flatten(tokens), deep MLP beside (parallel) or after (stacked) them, then the head."""
    model = build(tiny, "dcnv2", structure=structure, cross_layers=2, rank=4)
    b = batch(tiny, model)
    with torch.no_grad():
        x0 = model.inputs(b).flatten(1)
        x = x0
        for layer in model.cross:
            x = x0 * (x @ layer.v.weight.T @ layer.w.weight.T + layer.w.bias) + x
        top = torch.cat([x, model.deep(x0)], -1) if structure == "parallel" else model.deep(x)
        torch.testing.assert_close(model(b), model.head(top).squeeze(-1))


def test_dcnv2_rejects_an_unknown_structure(tiny):
    with pytest.raises(ValueError, match="structure"):
        build(tiny, "dcnv2", structure="sideways")


def test_plain_inputs_are_the_plain_mlps(tiny):
    """inputs="plain" (FuxiCTR's DCNv2): x0 is what mlp's default reads, every field's embedding and the mean of
    the history's; no content table, no candidate sequence, `dim` unused."""
    torch.manual_seed(3)
    model = build(tiny, "dcnv2", inputs="plain", embed_dim=4)
    mlp = build(tiny, "mlp", embed_dim=4)
    mlp.emb.load_state_dict(model.emb.state_dict())
    assert model.needs.content is False and model.needs.cand_seq is None
    assert "dim" in model.cfg.inactive()
    b = batch(tiny, model)
    with torch.no_grad():
        x0 = model.inputs(b).flatten(1)
        torch.testing.assert_close(x0, mlp.inputs(b))
        assert x0.shape[1] == model.cross[0].w.in_features
