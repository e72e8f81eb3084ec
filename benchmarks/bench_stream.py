"""Streaming vs in-memory training batches: anonymous memory and rows/s over one epoch of synthetic data.

For each size, a fresh process iterates one training epoch (batches of 4096, max_len 50, features gathered)
with the in-memory `Loader` (a permutation of the whole split) and with `StreamLoader` (shuffle buffer
100K rows, chunks of 64K). Memory is the peak rise of RssAnon sampled after every batch: the shards are memory
maps, whose file-backed pages the kernel reclaims at will, so anonymous memory is what a run really holds.

    python benchmarks/bench_stream.py [--sizes 1000000 4000000]   -> benchmarks/results/stream.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import write


def _anon_kib() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssAnon:"))
    return int(line.split()[1])


def child(kind: str, path: str) -> None:
    from ctrscale.data.dataset import PreparedDataset
    from ctrscale.data.loader import Loader, LoaderConfig
    from ctrscale.data.stream import StreamLoader
    data = PreparedDataset(path)
    cfg = LoaderConfig(batch_size=4096, max_len=50)
    base = _anon_kib()
    t0 = time.perf_counter()
    loader = Loader(data, "train", cfg, seed=0) if kind == "memory" else StreamLoader(data, "train", cfg, 0)
    peak, rows = 0, 0
    for batch in loader.epoch(0):
        rows += len(batch)
        peak = max(peak, _anon_kib() - base)
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "peak_anon_mib": peak / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "stream.json"))
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    from ctrscale.data import catalog
    rows = []
    for n in args.sizes:
        users = max(20_000, n // 400)       # the generator needs more users past ~10M impressions
        path, _ = catalog.prepare("synthetic", impressions=n, **({"n_users": users} if users > 20_000 else {}))
        row = {"impressions": n, "n_users": users}
        for kind in ("memory", "stream"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], capture_output=True,
                                 text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            row[kind] = {**res, "rows_per_s": res["rows"] / res["seconds"]}
        print(row)
        rows.append(row)
    write({"epochs": rows}, args.out)


if __name__ == "__main__":
    main()
