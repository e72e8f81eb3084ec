"""Training throughput (spec/benchmarks.md #3): impressions/s of every registered model at its default size,
on ml100k-ctr-v1 and the synthetic default, and the achieved FLOP/s as a fraction of the fp32 matmul peak
measured in the same run. Each model: warm-up steps, then timed steps over real batches.

    python benchmarks/bench_train.py --out benchmarks/results/train.json
"""
from __future__ import annotations

import argparse
import time

import torch
from common import benchmark_datasets, matmul_peak_flops, write

from ctrscale.accounting import training_flops_per_impression
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model, entries
from ctrscale.train.config import OptimSection
from ctrscale.train.optim import make_optimizer


def train_throughput(data, name: str, batch_size: int, steps: int, max_len: int) -> dict:
    torch.manual_seed(0)
    model = build_model(data.spec, {"name": name})
    opt = make_optimizer(model, OptimSection())
    batches = list(Loader(data, "train", LoaderConfig(batch_size=batch_size, max_len=max_len)).epoch(0))
    batches = (batches * (steps // max(1, len(batches)) + 2))[:steps + 3]

    def step(b):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for b in batches[:3]:
        step(b)
    t0 = time.perf_counter()
    for b in batches[3:]:
        step(b)
    dt = time.perf_counter() - t0
    ips = steps * batch_size / dt
    flops = training_flops_per_impression(model, batches[0])
    return {"model": name, "impressions_per_s": ips, "train_flops_per_impression": flops,
            "achieved_flops_per_s": ips * flops}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--out", default="benchmarks/results/train.json")
    args = ap.parse_args(argv)
    peak = matmul_peak_flops()
    sets = benchmark_datasets()
    rows = []
    for dname, data in sets.items():
        for name in args.models or sorted(entries()):
            r = train_throughput(data, name, args.batch_size, args.steps, data.spec.max_len)
            r.update(dataset=dname, max_len=data.spec.max_len, fraction_of_peak=r["achieved_flops_per_s"] / peak)
            rows.append(r)
            print(r)
    write({"benchmark": "train_throughput", "matmul_peak_flops_per_s": peak, "batch_size": args.batch_size,
           "results": rows}, args.out)


if __name__ == "__main__":
    main()
