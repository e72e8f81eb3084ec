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
import os
import subprocess
import sys
from pathlib import Path

import torch
from common import interleaved_medians, median_time, write

from ctrscale.accounting import inference_flops
from ctrscale.batch import Batch
from ctrscale.data.dataset import DataSpec
from ctrscale.models.registry import build_model
from ctrscale.train.recipe import keep_freed_memory

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


def models(r: int, device):
    torch.manual_seed(0)
    full = build_model(SPEC, {"name": "suan"}).to(device)
    light = build_model(SPEC, {"name": "lightsuan", "local": 4, "dilation": r}).to(device)
    light.load_state_dict(full.state_dict())
    return full, light


def train_step(model, batch):
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
    loss.backward()
    model.zero_grad(set_to_none=True)


def peak_memory_child(name: str, r: int, n: int, b: int, mode: str) -> float:
    """Run one step in this (fresh) process and return its peak memory rise in MiB."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full, light = models(r, device)
    model = full if name == "suan" else light
    batch = random_batch(b, n, device)
    run = (lambda: train_step(model, batch)) if mode == "train" else (lambda: torch.no_grad()(model)(batch))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    # ru_maxrss survives exec (it would report the parent's peak); VmHWM belongs to this address space and
    # writing 5 to clear_refs resets it to the current RSS, so the rise is this step's own peak.
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - base) / 1024


def _status_kib(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])


def peak_memory(name, r, n, b, mode) -> float:
    # Large blocks mmap'd and unmapped on free: RSS then tracks live tensors instead of glibc heap fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--child", name, str(r), str(n), str(b), mode],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def sparse_vs_full(lengths, dilations, batch_size, repeats, device) -> list[dict]:
    rows = []
    for n in lengths:
        b = max(1, batch_size * 256 // n)  # fewer sequences at long lengths, so full attention fits
        batch = random_batch(b, n, device)
        for r in dilations:
            full, light = models(r, device)
            fl = inference_flops(full, batch), inference_flops(light, batch)
            row = {"L": n, "r": r, "k": 4, "batch": b, "flops_ratio": fl[1] / fl[0]}
            for mode in ("train", "infer"):
                if mode == "train":
                    fns = [lambda m=m: train_step(m, batch) for m in (full, light)]
                else:
                    fns = [lambda m=m: torch.no_grad()(m)(batch) for m in (full, light)]
                t_full, t_light = interleaved_medians(fns, repeats)
                ratio = t_light / t_full
                row[mode] = {"seconds_full": t_full, "seconds_light": t_light, "time_ratio": ratio,
                             "realised": (1 - ratio) / (1 - row["flops_ratio"]) if row["flops_ratio"] < 1 else None}
                m_full = peak_memory("suan", r, n, b, mode)
                m_light = peak_memory("lightsuan", r, n, b, mode)
                row[mode].update(peak_mib_full=m_full, peak_mib_light=m_light,
                                 memory_ratio=m_light / m_full if m_full > 0 else None)
            rows.append(row)
            print(json.dumps(row))
    return rows


def request_scoring(n: int, counts, repeats, device) -> list[dict]:
    rows = []
    for name, extra in (("suan", {}), ("lightsuan", {"local": 4, "dilation": 4})):
        torch.manual_seed(0)
        model = build_model(SPEC, {"name": name, **extra}).to(device).eval()
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
        name, r, n, b, mode = args.child
        print(peak_memory_child(name, int(r), int(n), int(b), mode))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep_freed_memory()
    lengths = args.lengths or ([128, 512, 1024] if args.quick else [128, 256, 512, 1024, 2048])
    repeats = 3 if args.quick else 5
    sparse = sparse_vs_full(lengths, [2, 4, 8], 16, repeats, device)
    if args.no_scoring:
        old = Path(args.out)
        scoring = json.loads(old.read_text()).get("request_scoring", []) if old.exists() else []
    else:
        scoring = request_scoring(1000, [1, 10, 100, 1000], 3, device)
    write({"benchmark": "suan_vs_lightsuan", "sparse_vs_full": sparse, "request_scoring": scoring}, args.out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
