"""BST: its Transformer layer against a dense bidirectional reference."""
from __future__ import annotations

import torch

from ctrscale.models.attention import dense_attention
from ctrscale.models.registry import build_model


def test_bst_layer_equals_dense_bidirectional_reference(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "bst", "embed_dim": 4, "head_hidden": [16]}).eval()
    layer = model.layers[0]
    x, valid = torch.randn(3, 6, layer.out.in_features), torch.rand(3, 6) > 0.3
    valid[:, -1] = True
    with torch.no_grad():
        q, k, v = (t.unflatten(-1, (layer.heads, -1)).transpose(1, 2) for t in layer.qkv(x).chunk(3, -1))
        allowed = valid[:, None, None, :].expand(-1, 1, 6, -1)  # every query: the valid keys (the target is one)
        att = dense_attention(q, k, v, allowed)
        h = layer.norm1(x + layer.out(att.transpose(1, 2).flatten(-2)))
        ref = layer.norm2(h + layer.ffn(h))
        torch.testing.assert_close(layer(x, valid), ref, rtol=1e-5, atol=1e-5)
