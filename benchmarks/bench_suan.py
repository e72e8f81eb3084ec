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

import argparse
import json
import sys
from pathlib import Path

import plot_ratios
import torch
from common import SPEC, peak_memory_child, request_scoring, sparse_vs_full, write

from ctrscale.models.registry import build_model
from ctrscale.train.recipe import keep_freed_memory


def models(r: int, device):
    torch.manual_seed(0)
    full = build_model(SPEC, {"name": "suan"}).to(device)
    light = build_model(SPEC, {"name": "lightsuan", "local": 4, "dilation": int(r)}).to(device)
    light.load_state_dict(full.state_dict())
    return full, light


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/suan.json")
    ap.add_argument("--quick", action="store_true", help="fewer lengths and repeats")
    ap.add_argument("--lengths", nargs="*", type=int, help="history lengths for #1 (default 128 .. 2048)")
    ap.add_argument("--no-scoring", action="store_true",
                    help="skip #2 (request scoring), keeping the #2 figures already in --out")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(peak_memory_child(models, *args.child))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep_freed_memory()
    lengths = args.lengths or ([128, 512, 1024] if args.quick else [128, 256, 512, 1024, 2048])
    repeats = 3 if args.quick else 5
    sparse = sparse_vs_full(__file__, models, [2, 4, 8], "r", lengths, 16, repeats, device)
    if args.no_scoring:
        old = Path(args.out)
        scoring = json.loads(old.read_text()).get("request_scoring", []) if old.exists() else []
    else:
        named = [("suan", {"name": "suan"}), ("lightsuan", {"name": "lightsuan", "local": 4, "dilation": 4})]
        scoring = request_scoring(named, 1000, [1, 10, 100, 1000], 3, device)
    write({"benchmark": "suan_vs_lightsuan", "sparse_vs_full": sparse, "request_scoring": scoring}, args.out)
    print(plot_ratios.plot(Path(args.out)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
