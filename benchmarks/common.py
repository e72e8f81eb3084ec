"""Helpers shared by the benchmark scripts: machine description, interleaved timing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ctrscale.batch import Batch
from ctrscale.batch import DataSpec
from ctrscale.models.registry import build_model


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


# A sequence dataset's shape for the attention benchmarks: user fields, item fields, a context field, and
# behaviors with timestamps (random ids, gaps of 1 s to 14 h).
SPEC = DataSpec(sparse=("user_id", "age", "item_id", "category", "hour"), dense=(),
                hist=("item_id", "category", "action"),
                roles={"user_id": "user", "age": "user", "item_id": "item", "category": "item", "hour": "context"},
                field_vocab={"user_id": "user_id", "age": "age", "item_id": "item_id", "category": "category",
                             "hour": "hour", "hist.item_id": "item_id", "hist.category": "category",
                             "hist.action": "hist.action"},
                vocab_sizes={"user_id": 1000, "age": 9, "item_id": 5000, "category": 50, "hour": 26,
                             "hist.action": 4})


def random_batch(b: int, n: int, device, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    hist = torch.stack([torch.randint(2, SPEC.vocab_sizes[SPEC.field_vocab[f"hist.{h}"]], (b, n), generator=g)
                        for h in SPEC.hist], -1)
    times = 1_700_000_000 + torch.cumsum(torch.randint(1, 50_000, (b, n), generator=g), 1)
    sparse = torch.stack([torch.randint(2, SPEC.vocab_sizes[SPEC.field_vocab[f]], (b,), generator=g)
                          for f in SPEC.sparse], -1)
    return Batch(sparse=sparse, dense=torch.zeros(b, 0), hist=hist, hist_time=times, time=times[:, -1] + 10,
                 label=(torch.rand(b, generator=g) > 0.5).float(), user=torch.arange(b),
                 request=torch.arange(b)).to(device)


def peak_rise_mib(run, device) -> float:
    """Peak memory rise of run() in MiB, in a fresh process: max_memory_allocated on GPU; on CPU VmHWM
    (ru_maxrss survives exec and would report the parent's peak; writing 5 to clear_refs resets VmHWM to the
    current RSS, so the rise is this step's own peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - base) / 1024


def _status_kib(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])


def child_peak_mib(script: str, *args) -> float:
    """Run `script --child args...` in a fresh process; it prints its peak_rise_mib last."""
    # Large blocks mmap'd and unmapped on free: RSS then tracks live tensors instead of glibc heap fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, script, "--child", *map(str, args)], capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def run_step(model, batch, mode: str):
    """The measured unit: forward + backward of the BCE loss ("train") or a no-grad forward ("infer")."""
    if mode == "infer":
        with torch.no_grad():
            return model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
    loss.backward()
    model.zero_grad(set_to_none=True)


def sparse_vs_full_point(full, sparse, batch, repeats: int, peak_mib) -> dict:
    """benchmarks.md #1 at one point: counted-FLOPs ratio, and per mode the interleaved time ratio, the share of
    saved FLOPs realised as saved time ((1 - time ratio) / (1 - FLOPs ratio)) and the peak-memory ratio
    (peak_mib(which, mode) measures "full" or "sparse" in a fresh process)."""
    from ctrscale.accounting import inference_flops
    flops = inference_flops(sparse, batch) / inference_flops(full, batch)
    row = {"flops_ratio": flops}
    for mode in ("train", "infer"):
        t_full, t_sparse = interleaved_medians([lambda m=m: run_step(m, batch, mode) for m in (full, sparse)], repeats)
        ratio = t_sparse / t_full
        m_full, m_sparse = peak_mib("full", mode), peak_mib("sparse", mode)
        row[mode] = {"seconds_full": t_full, "seconds_sparse": t_sparse, "time_ratio": ratio,
                     "realised": (1 - ratio) / (1 - flops) if flops < 1 else None,
                     "peak_mib_full": m_full, "peak_mib_sparse": m_sparse,
                     "memory_ratio": m_sparse / m_full if m_full > 0 else None}
    return row


def sparse_vs_full(script: str, make_pair, settings, key: str, lengths, batch_size: int, repeats: int,
                   device, make_batch=random_batch) -> list[dict]:
    """benchmarks.md #1 over history lengths x settings. make_pair(setting, device) -> (full, sparse) models with
    shared weights; peak memory comes from `script --child full|sparse setting n b mode` (peak_memory_child)."""
    rows = []
    for n in lengths:
        b = max(1, batch_size * 256 // n)  # fewer sequences at long lengths, so full attention fits
        batch = make_batch(b, n, device)
        for setting in settings:
            full, sparse = make_pair(setting, device)
            peak = lambda which, mode: child_peak_mib(script, which, setting, n, b, mode)  # noqa: E731
            rows.append({"n": n, key: setting, "batch": b, **sparse_vs_full_point(full, sparse, batch, repeats, peak)})
            print(json.dumps(rows[-1]))
    return rows


def peak_memory_child(make_pair, which: str, setting: str, n: str, b: str, mode: str,
                      make_batch=random_batch) -> float:
    """One step of one model of the pair in this fresh process: its peak memory rise in MiB."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full, sparse = make_pair(setting, device)
    batch = make_batch(int(b), int(n), device)
    return peak_rise_mib(lambda: run_step(full if which == "full" else sparse, batch, mode), device)


def request_scoring(named_configs, n: int, counts, repeats, device) -> list[dict]:
    """benchmarks.md #2: one user with n behaviors and C candidates: encode_user once + score_candidates (reuse)
    against scoring C independent impressions (the history re-encoded per candidate)."""
    rows = []
    for name, config in named_configs:
        torch.manual_seed(0)
        model = build_model(SPEC, config).to(device).eval()
        user = random_batch(1, n, device)
        pool = random_batch(max(counts), 4, device, seed=1).sparse
        pool[:, SPEC.sparse_of_role("user")] = user.sparse[:, SPEC.sparse_of_role("user")]
        for c in counts:
            cands = pool[:c].unsqueeze(0)

            @torch.no_grad()
            def reuse():
                return model.score_candidates(model.encode_user(user), cands, torch.zeros(1, c, 0, device=device))

            @torch.no_grad()
            def independent(chunk: int = 25):  # chunks bound memory; the work is C full encodings either way
                out = []
                for lo in range(0, c, chunk):
                    m = min(chunk, c - lo)
                    rep = lambda t: t.expand(m, *t.shape[1:])  # noqa: E731
                    flat = Batch(sparse=cands[0, lo:lo + m], dense=torch.zeros(m, 0, device=device),
                                 hist=rep(user.hist), hist_time=rep(user.hist_time), time=rep(user.time),
                                 label=rep(user.label), user=rep(user.user), request=rep(user.request))
                    out.append(model(flat))
                return torch.cat(out)
            torch.testing.assert_close(reuse()[0], independent(), rtol=1e-4, atol=1e-4)  # also the warm-up
            t_r, t_i = median_time(reuse, repeats, 0), median_time(independent, repeats, 0)
            rows.append({"model": name, "L": n, "candidates": c, "seconds_reuse": t_r, "seconds_independent": t_i,
                         "speedup": t_i / t_r})
            print(json.dumps(rows[-1]))
    return rows


def sparse_benchmark_main(argv, script: str, benchmark: str, make_pair, key: str, settings: list, scoring_configs,
                          default_out: str, make_batch=random_batch, scoring=None, extra=None) -> None:
    """The command line the sparse-vs-full benchmarks share: #1 over lengths x settings (`--settings` picks
    them; `key` names them in the rows), #2 request scoring of `scoring_configs` (or `scoring(device)` -> rows),
    `extra(device)` -> more figures for the JSON; JSON + PNG into --out."""
    import argparse

    import plot_ratios

    from ctrscale.train.device import keep_freed_memory
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--quick", action="store_true", help="fewer lengths and repeats")
    ap.add_argument("--lengths", nargs="*", type=int, help="history lengths for #1 (default 128 .. 2048)")
    ap.add_argument("--settings", nargs="*", default=settings, type=type(settings[0]),
                    help=f"{key} values against the full model (default {settings})")
    ap.add_argument("--no-scoring", action="store_true",
                    help="skip #2 (request scoring), keeping the #2 figures already in --out")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(peak_memory_child(make_pair, *args.child, make_batch=make_batch))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep_freed_memory()
    lengths = args.lengths or ([128, 512, 1024] if args.quick else [128, 256, 512, 1024, 2048])
    sparse = sparse_vs_full(script, make_pair, args.settings, key, lengths, 16, 3 if args.quick else 5, device,
                            make_batch)
    if args.no_scoring:
        old = Path(args.out)
        rows = json.loads(old.read_text()).get("request_scoring", []) if old.exists() else []
    elif scoring is not None:
        rows = scoring(device)
    else:
        rows = request_scoring(scoring_configs, 1000, [1, 10, 100, 1000], 3, device)
    write({"benchmark": benchmark, "sparse_vs_full": sparse, "request_scoring": rows,
           **(extra(device) if extra else {})}, args.out)
    print(plot_ratios.plot(Path(args.out)))
