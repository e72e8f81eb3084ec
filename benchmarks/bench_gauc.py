"""Metric speed (spec/benchmarks.md, figure 5): GAUC on 10 million impressions over 1 million users.

Random labels (CTR ~ 10%), uniform random user ids and uniform random scores, fixed seed. Scores come
two ways, timed interleaved in the same run: float64 rounded to 1e-6 (ties; the general path, which
ranks scores with one argsort) and the same values cast to float32 (what a model's fp32 outputs give;
metrics packs their bit pattern into the sort key and needs no argsort). Warm-up on a small input,
then `--repeats` timed runs on the full input; global AUC is timed beside it as a same-run reference.

    python benchmarks/bench_gauc.py --n 10_000_000 --groups 1_000_000 --out benchmarks/results/gauc.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from common import machine

from ctrscale import metrics


def make_data(n: int, groups: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.int8)
    scores = np.round(rng.random(n), 6)
    users = rng.integers(0, groups, n, dtype=np.int64)
    return labels, scores, users


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000, help="impressions")
    ap.add_argument("--groups", type=int, default=1_000_000, help="users")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gauc.json"))
    args = ap.parse_args(argv)

    # Warm-up: first-call costs (imports, allocator, page faults) stay out of the figures.
    wl, ws, wu = make_data(100_000, max(1, args.groups // 100), args.seed + 1)
    metrics.gauc(wl, ws, wu)
    metrics.auc(wl, ws)

    labels, scores, users = make_data(args.n, args.groups, args.seed)
    scores32 = scores.astype(np.float32)
    gauc_s, gauc32_s, auc_s = [], [], []
    for _ in range(args.repeats):  # interleaved, so all see the same machine state
        t, res = timed(metrics.gauc, labels, scores, users)
        gauc_s.append(t)
        t, res32 = timed(metrics.gauc, labels, scores32, users)
        gauc32_s.append(t)
        t, auc_value = timed(metrics.auc, labels, scores)
        auc_s.append(t)

    med = statistics.median(gauc_s)
    med32 = statistics.median(gauc32_s)
    result = {
        "benchmark": "gauc",
        "n": args.n,
        "groups": args.groups,
        "seed": args.seed,
        "scores": "float64, rounded to 1e-6",
        "seconds": {"repeats": gauc_s, "median": med},
        "impressions_per_second": args.n / med,
        "float32_scores": {
            "seconds": {"repeats": gauc32_s, "median": med32},
            "impressions_per_second": args.n / med32,
            "gauc": res32.gauc,
        },
        "reference_auc_seconds": {"repeats": auc_s, "median": statistics.median(auc_s)},
        "gauc_over_auc_time_ratio": med / statistics.median(auc_s),
        "result": {
            "gauc": res.gauc,
            "uauc": res.uauc,
            "groups_used": res.groups_used,
            "groups_skipped": res.groups_skipped,
            "auc": auc_value,
        },
        # Load average: other work on the machine is the main source of noise in these timings.
        "machine": {**machine(), "numpy": np.__version__, "load_avg_1m_at_end": os.getloadavg()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"gauc: n={args.n:,} groups={args.groups:,}: float64 scores median {med:.3f} s "
        f"({args.n / med / 1e6:.2f} M impressions/s; repeats {', '.join(f'{t:.3f}' for t in gauc_s)}), "
        f"float32 scores median {med32:.3f} s (repeats {', '.join(f'{t:.3f}' for t in gauc32_s)}); "
        f"auc median {result['reference_auc_seconds']['median']:.3f} s -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
