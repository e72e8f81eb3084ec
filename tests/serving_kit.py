"""Helpers the serving tests share: a run folder whose weights are random (equality with offline scoring does not
need a trained model, and writing one costs no training), and its bundle."""
from __future__ import annotations

from pathlib import Path

import torch

from ctrscale.data.dataset import PreparedDataset
from ctrscale.models.registry import build_model
from ctrscale.train.config import load_config, save_config
from ctrscale.train.runs import save_checkpoint
from model_testkit import jitter


def random_run(root: Path, data: PreparedDataset, model: str, *overrides: str, seed: int = 0) -> Path:
    """A run folder (config.yaml + best.pt) as `ctrscale train` leaves one, with jittered random weights."""
    cfg = load_config(None, [f"name={model}", f"out_dir={root}", f"model.name={model}", f"data.path={data.root}",
                             *overrides])
    torch.manual_seed(seed)
    net = jitter(build_model(data.spec, cfg.model, content=data.content()), 0.05)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    save_checkpoint({"model": net.state_dict()}, cfg.run_dir / "best.pt")
    return cfg.run_dir
