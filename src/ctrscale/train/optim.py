"""The optimizer (embedding tables and dense parameters apart) and the learning-rate schedule of a run."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models.tables import embedding_params
from .config import OptimSection


def make_optimizer(model: nn.Module, o: OptimSection) -> torch.optim.Optimizer:
    """Embedding tables and dense parameters in separate groups with their own lr and weight decay."""
    tables = {id(p) for p in embedding_params(model).values()}
    emb = [p for p in model.parameters() if p.requires_grad and id(p) in tables]
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in tables]
    groups = [{"params": dense, "lr": o.lr, "weight_decay": o.weight_decay, "name": "dense"},
              {"params": emb, "lr": o.emb_lr, "weight_decay": o.emb_weight_decay, "name": "embedding"}]
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls([g for g in groups if g["params"]], betas=tuple(o.betas))


def make_schedule(opt: torch.optim.Optimizer, o: OptimSection, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over optim.warmup_steps, then constant, cosine or linear decay to the run's last step."""
    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        frac = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
        if o.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        if o.schedule == "linear":
            return 1.0 - frac
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
