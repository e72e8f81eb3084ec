"""Parameters and counted FLOPs (shared/spec/metrics.md): dense vs embedding parameters, inference GFLOPs per
batch of 60 impressions, training FLOPs per impression, all counted by torch.utils.flop_counter on real passes."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    mm_flop,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from .batch import Batch
from .models.tables import embedding_params, tables_of


def _register_cpu_attention_flops() -> None:
    """torch counts the GPU kernels of F.scaled_dot_product_attention but not the CPU one (0 FLOPs). Count it
    like the others: the full Lq x Lk score and value products, whatever the mask (the kernel computes them)."""
    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    try:
        if fwd is not None:
            register_flop_formula(fwd)(lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v))
        if bwd is not None:
            register_flop_formula(bwd)(
                lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v))
    except (RuntimeError, ValueError):  # already registered (a later torch counts it itself)
        pass


_register_cpu_attention_flops()


def count_params(model: nn.Module) -> dict[str, int]:
    """Trainable parameters split into embedding tables and everything else ("dense"); frozen tables apart."""
    out = {"dense": 0, "embedding": 0, "frozen": 0}
    tables = embedding_params(model)
    for name, p in model.named_parameters():
        key = "frozen" if not p.requires_grad else "embedding" if name in tables else "dense"
        out[key] += p.numel()
    out["frozen"] += sum(b.numel() for n, b in model.named_buffers() if n.endswith("content"))
    # a row-sharded table holds a share of its rows on this rank; it counts whole
    out["embedding"] += sum(t.num_embeddings * t.embedding_dim - t.weight.numel() for _, t in tables_of(model)
                            if t.weight.requires_grad)
    return out


def _mm_flops(a, b, *args, out_shape=None, **kwargs) -> int:
    """aten.mm, counting a sparse (CSR/CSC/COO) left factor by its stored entries: 2 x nnz x columns of b.
    torch's own formula counts every product as dense (CSA's sparse pattern would count as L x L)."""
    if a.layout != torch.strided:
        return 2 * a._nnz() * b.shape[1]
    return mm_flop(a.shape, b.shape)


_mm_flops._get_raw = True  # FlopCounterMode hands raw tensors to formulas marked so


def _flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.mm: _mm_flops}) as fc:
        fn()
    return int(fc.get_total_flops())


def inference_flops(model: nn.Module, batch: Batch) -> int:
    """Counted FLOPs of one forward pass over `batch` (use 60 impressions for the seeds' unit)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        n = _flops(lambda: model(batch))
    model.train(was)
    return n


def training_flops_per_impression(model: nn.Module, batch: Batch) -> float:
    """Counted FLOPs of forward + backward of the BCE loss, divided by the batch size."""
    was = model.training
    model.train()

    def step():
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
        loss.backward()
    n = _flops(step)
    model.zero_grad(set_to_none=True)
    model.train(was)
    return n / len(batch)
