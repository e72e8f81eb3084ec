"""SparseCTR vs its full-attention variant A1 (spec/benchmarks.md #1 and #2), CPU or GPU, ratios of
interleaved medians in one run.

#1 sparse vs full: at n in {128 .. 2048} behaviors, each preset (S1-S4; S2 is the issue's figure) against A1 with
   the same weights where they exist (embeddings, projections, FFNs, head; the aggregation MLPs and the gate are
   SparseCTR's own): forward+backward and inference time, peak memory (a fresh process per point) and the
   counted-FLOPs ratio beside the time ratio; "realised" = (1 - time ratio) / (1 - FLOPs ratio).
#2 request scoring: one user with n = 1000 behaviors and C in {1, 10, 100, 1000} candidates, cached history
   against C independent impressions.

    python benchmarks/bench_sparsectr.py --out benchmarks/results/sparsectr.json [--quick]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from common import SPEC, sparse_benchmark_main

from ctrscale.models.registry import build_model


def models(preset: str, device):
    torch.manual_seed(0)
    full = build_model(SPEC, {"name": "sparsectr", "attention": "full"}).to(device)
    sparse = build_model(SPEC, {"name": "sparsectr", "sparsity": preset}).to(device)
    sparse.load_state_dict(full.state_dict(), strict=False)
    return full, sparse


def main(argv=None):
    sparse_benchmark_main(argv, __file__, "sparsectr_vs_full", models, "preset", ["S2"],
                          [("sparsectr", {"name": "sparsectr"}),
                           ("sparsectr-A1", {"name": "sparsectr", "attention": "full"})],
                          "benchmarks/results/sparsectr.json")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
