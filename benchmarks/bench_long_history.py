"""Long histories: training impressions/s with padding to max_len, with each batch trimmed to its longest history,
and with trimming plus length windows (rows of similar history length batched together), one model, timed
interleaved (batch i of every mode in turn) in one run.

    python benchmarks/bench_long_history.py --data ml1m-u2999-ctr-v1 --model suan --max-len 500
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import write

from ctrscale.data import catalog
from ctrscale.data.dataset import PreparedDataset
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model
from ctrscale.train.config import OptimSection
from ctrscale.train.optim import make_optimizer

MODES = {"padded": {"trim": False}, "trimmed": {}, "trimmed+window16": {"length_window": 16}}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="ml1m-u2999-ctr-v1")
    ap.add_argument("--model", default="suan")
    ap.add_argument("--max-len", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="benchmarks/results/long_history.json")
    args = ap.parse_args(argv)
    data = PreparedDataset(catalog.prepare(args.data)[0])
    torch.manual_seed(0)
    model = build_model(data.spec, {"name": args.model})
    opt = make_optimizer(model, OptimSection())
    batches = {}
    for mode, extra in MODES.items():
        it = Loader(data, "train", LoaderConfig(args.batch_size, args.max_len, **extra), seed=0).epoch(0)
        batches[mode] = [next(it) for _ in range(args.steps + 1)]  # the first one warms up
    seconds = {m: 0.0 for m in MODES}
    for i in range(args.steps + 1):
        for mode in MODES:
            b = batches[mode][i]
            t0 = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                seconds[mode] += time.perf_counter() - t0
    lengths = data.history_lengths("train", args.max_len)
    rows = {m: {"impressions_per_s": args.steps * args.batch_size / seconds[m],
                "mean_width": float(np.mean([b.hist.shape[1] for b in batches[m][1:]]))} for m in MODES}
    for m in MODES:
        rows[m]["speedup_vs_padded"] = rows[m]["impressions_per_s"] / rows["padded"]["impressions_per_s"]
    write({"benchmark": "long_history", "data": args.data, "model": args.model, "max_len": args.max_len,
           "batch_size": args.batch_size, "steps": args.steps, "mean_history": float(lengths.mean()),
           "modes": rows}, args.out)


if __name__ == "__main__":
    main()
