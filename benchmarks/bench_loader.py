"""Data pipeline throughput (spec/benchmarks.md #4): impressions/s from prepared shards to ready Batches.

Measured on ml100k-ctr-v1 (when ../shared/data is there) and on the synthetic default, with 0 and 2 worker
processes, at max_len 50 and 200. Compare with bench_train.py: the loader must be >= 5x the fastest model.

    python benchmarks/bench_loader.py --out benchmarks/results/loader.json
"""
from __future__ import annotations

import argparse
import time

from common import benchmark_datasets, write

from ctrscale.data.loader import Loader, LoaderConfig


def throughput(data, workers: int, max_len: int, batch_size: int, max_batches: int) -> float:
    loader = Loader(data, "train", LoaderConfig(batch_size=batch_size, max_len=max_len, num_workers=workers))
    it = loader.epoch(0)
    next(it)  # start-up (worker spawn) stays out of the figure
    t0, n = time.perf_counter(), 0
    for i, b in enumerate(it):
        n += len(b)
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--out", default="benchmarks/results/loader.json")
    args = ap.parse_args(argv)
    sets = benchmark_datasets()
    rows = []
    for name, data in sets.items():
        for max_len in (50, 200):
            for workers in (0, 2):
                ips = throughput(data, workers, max_len, args.batch_size, args.batches)
                rows.append({"dataset": name, "max_len": max_len, "workers": workers, "impressions_per_s": ips})
                print(rows[-1])
    write({"benchmark": "loader", "batch_size": args.batch_size, "results": rows}, args.out)


if __name__ == "__main__":
    main()
