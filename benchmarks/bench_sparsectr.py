"""SparseCTR vs its full-attention variant A1 (spec/benchmarks.md #1 and #2), CPU or GPU, ratios of
interleaved medians in one run.

#1 sparse vs full: at n in {128 .. 2048} behaviors, each preset (S1-S4; S2 is the issue's figure) against A1 with
   the same weights where they exist (embeddings, projections, FFNs, head; the aggregation MLPs and the gate are
   SparseCTR's own): forward+backward and inference time, peak memory (a fresh process per point) and the
   counted-FLOPs ratio beside the time ratio; "realised" = (1 - time ratio) / (1 - FLOPs ratio).
#2 request scoring: one user with n = 1000 behaviors and C in {1, 10, 100, 1000} candidates, cached history
   against C independent impressions.
`--settings` also takes the ablations (A2 .. B4) and the alternatives (models/sparsectr.py: ALTERNATIVES), each
against A1 like the presets.

    python benchmarks/bench_sparsectr.py --out benchmarks/results/sparsectr.json [--quick]
    python benchmarks/bench_sparsectr.py --settings S2 dilated linear fixed-chunks similarity-chunks t5 alibi rope \
        hstu-bias --lengths 1024 --no-scoring --out benchmarks/results/sparsectr_alternatives.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from common import SPEC, sparse_benchmark_main

from ctrscale.models.registry import build_model
from ctrscale.models.sparsectr import ALTERNATIVES, SPARSITY, VARIANTS


def setting_config(setting: str) -> dict:
    """A preset (S1-S4), an ablation (A2-B4) or an alternative of the paper's Figure 2, all at S2 otherwise."""
    if setting in SPARSITY:
        return {"sparsity": setting}
    named = {**VARIANTS, **ALTERNATIVES}
    if setting not in named:
        raise SystemExit(f"unknown setting {setting!r}: one of {[*SPARSITY, *named]}")
    return named[setting]


def models(setting: str, device):
    torch.manual_seed(0)
    full = build_model(SPEC, {"name": "sparsectr", "attention": "full"}).to(device)
    sparse = build_model(SPEC, {"name": "sparsectr", **setting_config(setting)}).to(device)
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
