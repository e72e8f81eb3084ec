"""HSTU and BST mechanisms against dense references."""
from __future__ import annotations

import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.attention import dense_attention
from ctrscale.models.hstu import pointwise_attention
from ctrscale.models.registry import build_model


def _batch(tiny, n=24, max_len=11):
    return next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=n, max_len=max_len), seed=9)))


def test_hstu_cached_candidates_equal_full_sequence_reference(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "hstu", "embed_dim": 4, "head_hidden": [16]}).eval()
    for layer in model.layers:
        with torch.no_grad():
            layer.bias.time_table.normal_()
            layer.bias.pos_table.normal_()
    b = _batch(tiny)
    emb = model.emb
    x = torch.cat([emb.hist(b.hist).flatten(-2), emb.candidate_as_behavior(b.sparse).flatten(-2)[:, None]], 1)
    times = torch.cat([b.hist_time, b.time[:, None]], 1)
    valid = torch.cat([b.hist_mask, torch.ones(len(b), 1, dtype=torch.bool)], 1)
    n = x.shape[1]
    pos = torch.arange(n)
    allowed = (pos[:, None] >= pos[None, :]) & valid[:, None, None, :]
    with torch.no_grad():
        for layer in model.layers:
            u, v, q, k = layer._project(x)
            bias = layer.bias(times[:, :, None], times[:, None, :], pos[:, None] - pos[None, :]).unsqueeze(1)
            x = layer._finish(x, pointwise_attention(q, k, v, allowed, bias), u)
        item_ctx = emb.spec.sparse_of_role("item", "context")
        other = torch.cat([emb.sparse(b.sparse, item_ctx).flatten(-2), emb.numeric(b.dense).flatten(-2)], -1)
        prof = emb.sparse(b.sparse, emb.spec.sparse_of_role("user")).flatten(-2)
        ref = model.head(torch.cat([model.final_norm(x[:, -1]), prof, other], -1)).squeeze(-1)
        torch.testing.assert_close(model(b), ref, rtol=1e-4, atol=1e-5)


def test_pointwise_attention_is_silu_weighted_mean():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3, 2)
    allowed = torch.tensor([[True, False, False], [True, True, False], [False, True, True]])
    got = pointwise_attention(q, k, v, allowed, 0.0)
    for i in range(3):
        js = allowed[i].nonzero().squeeze(1)
        w = torch.nn.functional.silu(q[0, 0, i] @ k[0, 0, js].T)
        torch.testing.assert_close(got[0, 0, i], (w[:, None] * v[0, 0, js]).sum(0) / len(js))


def test_bst_layer_equals_dense_bidirectional_reference(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "bst", "embed_dim": 4, "head_hidden": [16]}).eval()
    layer = model.layers[0]
    x, valid = torch.randn(3, 6, layer.out.in_features), torch.rand(3, 6) > 0.3
    valid[:, -1] = True
    with torch.no_grad():
        q, k, v = (t.unflatten(-1, (layer.heads, -1)).transpose(1, 2) for t in layer.qkv(x).chunk(3, -1))
        allowed = valid[:, None, None, :] | torch.eye(6, dtype=torch.bool)
        att = dense_attention(q, k, v, allowed)
        h = layer.norm1(x + layer.out(att.transpose(1, 2).flatten(-2)))
        ref = layer.norm2(h + layer.ffn(h))
        torch.testing.assert_close(layer(x, valid), ref, rtol=1e-5, atol=1e-5)
