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

import argparse
import sys
from pathlib import Path

import plot_ratios
import torch
from common import SPEC, peak_memory_child, request_scoring, sparse_vs_full, write

from ctrscale.models.registry import build_model
from ctrscale.train.recipe import keep_freed_memory


def models(preset: str, device):
    torch.manual_seed(0)
    full = build_model(SPEC, {"name": "sparsectr", "attention": "full"}).to(device)
    sparse = build_model(SPEC, {"name": "sparsectr", "sparsity": preset}).to(device)
    sparse.load_state_dict(full.state_dict(), strict=False)
    return full, sparse


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/sparsectr.json")
    ap.add_argument("--quick", action="store_true", help="fewer lengths and repeats")
    ap.add_argument("--lengths", nargs="*", type=int, help="history lengths for #1 (default 128 .. 2048)")
    ap.add_argument("--presets", nargs="*", default=["S2"], help="sparsity presets against A1 (default S2)")
    ap.add_argument("--no-scoring", action="store_true", help="skip #2 (request scoring)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(peak_memory_child(models, *args.child))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep_freed_memory()
    lengths = args.lengths or ([128, 512, 1024] if args.quick else [128, 256, 512, 1024, 2048])
    repeats = 3 if args.quick else 5
    sparse = sparse_vs_full(__file__, models, args.presets, "preset", lengths, 16, repeats, device)
    scoring = [] if args.no_scoring else request_scoring(
        [("sparsectr", {"name": "sparsectr"}), ("sparsectr-A1", {"name": "sparsectr", "attention": "full"})],
        1000, [1, 10, 100, 1000], 3, device)
    write({"benchmark": "sparsectr_vs_full", "sparse_vs_full": sparse, "request_scoring": scoring}, args.out)
    print(plot_ratios.plot(Path(args.out)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
