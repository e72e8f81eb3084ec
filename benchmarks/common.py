"""Helpers shared by the benchmark scripts: machine description, interleaved timing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns, repeats: int = 5, warmup: int = 2) -> list[float]:
    """Median seconds of each fn, timed in turn (a, b, a, b, ...) so drifts in machine load hit all alike.
    Each is warmed up first: the first calls at a new shape pay for allocator growth and page faults."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's measured fp32 matmul peak (FLOP/s), the yardstick for achieved model FLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / median_time(lambda: a @ b, repeats)


def benchmark_datasets() -> dict:
    """The synthetic default, and ml100k-ctr-v1 where its raw files are found."""
    from ctrscale.data import catalog
    from ctrscale.data.dataset import PreparedDataset
    sets = {"synthetic": PreparedDataset(catalog.prepare("synthetic")[0])}
    try:
        sets["ml100k-ctr-v1"] = PreparedDataset(catalog.prepare("ml100k-ctr-v1")[0])
    except FileNotFoundError as e:
        print(f"skipping ml100k-ctr-v1: {e}")
    return sets


def write(result: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "machine": machine()}, indent=1))
    print(json.dumps(result, indent=1))
