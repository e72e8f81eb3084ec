"""Parameter and FLOP accounting against hand counts."""
from __future__ import annotations

import torch
from torch import nn

from ctrscale.accounting import count_params, inference_flops
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model


def test_dense_and_embedding_parameters_are_counted_apart(tiny):
    model = build_model(tiny.spec, {"name": "mlp", "embed_dim": 8, "hidden": [16]})
    p = count_params(model)
    emb = sum(t.weight.numel() for t in model.emb.tables.values())
    assert p["embedding"] == emb
    assert p["dense"] == sum(x.numel() for x in model.parameters()) - emb
    head_in = model.head[0].in_features
    assert p["dense"] == 2 * len(tiny.spec.dense) * 8 + head_in * 16 + 16 + 16 + 1


def test_counted_flops_of_the_mlp_head(tiny):
    model = build_model(tiny.spec, {"name": "mlp", "embed_dim": 8, "hidden": [16]})
    b = next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=60, max_len=10))))
    head_in = model.head[0].in_features
    # The counter sees the two linear layers (2 * B * in * out each); lookups and pooling are not matmuls.
    assert inference_flops(model, b) == 2 * 60 * (head_in * 16 + 16 * 1)
    assert isinstance(model.head[0], nn.Linear) and torch.is_grad_enabled()


def test_sparse_products_count_their_entries_only():
    """CSA's block-diagonal CSR pattern: 2 x nnz x d FLOPs forward, the same again for the backward product."""
    import torch

    from ctrscale.accounting import _flops
    from ctrscale.models.content import content_topk, csa_apply
    torch.manual_seed(0)
    b, n, k, d = 3, 10, 4, 8
    x = torch.randn(b, n, d, requires_grad=True)
    vecs = torch.nn.functional.normalize(torch.randn(b, n, 5), dim=-1)
    idx, w = content_topk(vecs, torch.ones(b, n, dtype=torch.bool), k, 0.1)
    assert _flops(lambda: csa_apply(x, idx, w)) == 2 * b * n * k * d
    assert _flops(lambda: csa_apply(x, idx, w).sum().backward()) == 2 * (2 * b * n * k * d)
    dense = torch.randn(6, 7)
    assert _flops(lambda: dense @ torch.randn(7, 5)) == 2 * 6 * 7 * 5
