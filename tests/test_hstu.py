"""HSTU: request scoring over the cached history against the full-sequence dense reference."""
from __future__ import annotations

import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.attention.pointwise import pointwise_attention
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
