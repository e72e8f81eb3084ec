"""SUAN vs LightSUAN (spec/benchmarks.md #1 and #2), CPU or GPU, one run, ratios of interleaved medians.

#1 sparse vs full: at history length L in {128 .. 2048}, LightSUAN (k = 4, r in {2, 4, 8}) against SUAN with the
   same weights: forward+backward and inference time, peak memory (a fresh process per point: the rise of
   ru_maxrss on CPU, max_memory_allocated on GPU), and the counted-FLOPs ratio beside the time ratio.
   "realised" = (1 - time ratio) / (1 - FLOPs ratio): the share of the saved FLOPs that shows up as saved time.
#2 request scoring: one user with L = 1000 behaviors and C in {1, 10, 100, 1000} candidates: encode_user once +
   score_candidates (reuse) against scoring C independent impressions (the history re-encoded per candidate).

    python benchmarks/bench_suan.py --out benchmarks/results/suan.json [--quick]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from common import SPEC, sparse_benchmark_main

from ctrscale.models.registry import build_model


def models(r: int, device):
    torch.manual_seed(0)
    full = build_model(SPEC, {"name": "suan"}).to(device)
    light = build_model(SPEC, {"name": "lightsuan", "local": 4, "dilation": int(r)}).to(device)
    light.load_state_dict(full.state_dict())
    return full, light


def main(argv=None):
    sparse_benchmark_main(argv, __file__, "suan_vs_lightsuan", models, "r", [2, 4, 8],
                          [("suan", {"name": "suan"}), ("lightsuan", {"name": "lightsuan", "local": 4, "dilation": 4})],
                          "benchmarks/results/suan.json")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
