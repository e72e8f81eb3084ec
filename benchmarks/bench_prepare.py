"""The generic preparer on a synthetic CSV of a given size: peak RSS and wall time against the input's size.

Each size gets a fresh CSV under a temporary folder (deleted afterwards): one impression per line with its own
history (0..20 behaviors), 100K users, 50K items, 100 categories, like the schema in tests/test_generic_prepare.py.
The preparer runs in a child process under /usr/bin/time -v (its "Maximum resident set size" is the peak RSS).

    python benchmarks/bench_prepare.py [--sizes-mb 250 1000] [--tmp /tmp]   -> benchmarks/results/prepare.json
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

T0 = 1_600_000_000
SCHEMA = """
name: bench
label: clicked
user_key: user
time: ts
fields:
  - {name: user_id, column: user, role: user}
  - {name: item_id, column: item, role: item}
  - {name: cat, role: item}
  - {name: price, kind: numeric, role: item}
sequences:
  - name: hist
    max_len: 20
    time: hist_ts
    fields:
      - {name: item_id, column: hist_items, vocab: item_id}
      - {name: cat, column: hist_cats, vocab: cat}
"""


def make_csv(path: Path, size_mb: int, seed: int = 0) -> int:
    """Write rows until the file holds `size_mb` MB; returns the row count. Histories come from a pool of 4096
    (items, categories, times before the first impression), so writing is fast and no history leaks."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(4096):
        n = int(rng.integers(0, 21))
        items = rng.integers(0, 50_000, n)
        times = np.sort(T0 - rng.integers(1, 30 * 86_400, n))
        pool.append(",".join(["|".join(f"i{i}" for i in items), "|".join(f"c{i % 100}" for i in items),
                              "|".join(map(str, times))]))
    target, rows, t = size_mb * 1_000_000, 0, T0
    with open(path, "w") as f:
        f.write("user,item,cat,price,clicked,ts,hist_items,hist_cats,hist_ts\n")
        while f.tell() < target:
            n = 100_000
            user, item = rng.integers(0, 100_000, n), rng.integers(0, 50_000, n)
            price, click, hist = rng.random(n) * 100, rng.random(n) < 0.1, rng.integers(0, 4096, n)
            ts = t + np.sort(rng.integers(0, 1000, n))
            t = int(ts[-1])
            f.write("".join(f"u{u},i{i},c{i % 100},{p:.2f},{int(c)},{s},{pool[h]}\n" for u, i, p, c, s, h
                            in zip(user.tolist(), item.tolist(), price.tolist(), click.tolist(), ts.tolist(),
                                   hist.tolist())))
            rows += n
    return rows


def child(schema: str, csv: str, out: str) -> None:
    from ctrscale.data.generic import prepare_from_schema_file
    t0 = time.perf_counter()
    rep = prepare_from_schema_file(schema, [csv], out)
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows_written": rep["rows_written"]}))


def run(size_mb: int, tmp: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=tmp))
    try:
        (folder / "schema.yaml").write_text(SCHEMA)
        csv = folder / "data.csv"
        rows = make_csv(csv, size_mb)
        cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", str(folder / "schema.yaml"), str(csv),
               str(folder / "out")]
        p = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
        res = json.loads(p.stdout.strip().splitlines()[-1])
        input_mb = csv.stat().st_size / 1e6
        out = {"input_mb": round(input_mb, 1), "rows": rows, "peak_rss_mb": round(peak_kib * 1024 / 1e6, 1),
               "peak_over_input": round(peak_kib * 1024 / 1e6 / input_mb, 2), "seconds": round(res["seconds"], 1),
               "mb_per_s": round(input_mb / res["seconds"], 1)}
        print(json.dumps(out), flush=True)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[250, 1000])
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prepare.json"))
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    from common import write  # imports torch: not in the measured child
    write({"runs": [run(s, a.tmp) for s in a.sizes_mb]}, a.out)


if __name__ == "__main__":
    main()
