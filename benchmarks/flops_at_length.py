"""Counted inference GFLOPs per 60 impressions whose histories fill the run's max_len, for recorded run configs.

A run's own `inference_gflops_per_60` counts the first 60 validation impressions (short histories on ml1m);
this prices every model at the full length it was trained for, so sparse and dense attention compare fairly.

    python benchmarks/flops_at_length.py results/ml1m-sparsectr/*-s0/config.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ctrscale.accounting import inference_flops
from ctrscale.data.catalog import open_run_data
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model
from ctrscale.train.config import load_config


def gflops_at_max_len(config_path: Path, n: int = 60) -> tuple[int, float]:
    """(rows found, GFLOPs) of one forward pass over n validation impressions with histories >= max_len."""
    cfg = load_config(config_path)
    data = open_run_data(cfg.data)                          # with the run's field selection
    model = build_model(data.spec, cfg.model, content=data.content()).eval()
    length = cfg.data.max_len or data.spec.max_len           # None: the dataset's own
    rows = np.flatnonzero(data.history_lengths("valid", length) >= length)[:n]
    if len(rows) == 0:
        raise SystemExit(f"{config_path}: no validation impression of {cfg.data.name} has {length} behaviors")
    loader = Loader(data, "valid", LoaderConfig(batch_size=n, max_len=length, shuffle=False,
                                                cand_seq=model.needs.cand_seq))
    return len(rows), inference_flops(model, next(iter(loader.batches([rows])))) / 1e9


if __name__ == "__main__":
    torch.set_num_threads(1)
    for path in map(Path, sys.argv[1:]):
        rows, gflops = gflops_at_max_len(path)
        print(f"{path.parent.name}\t{rows} rows\t{gflops:.3f}", flush=True)
