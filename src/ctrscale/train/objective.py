"""The training loss of a run (plain BCE, listwise BCE, or online distillation) and its backward pass in
micro-batches."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.registry import build_model
from .config import RunConfig
from .inference import trains_listwise


def accumulate_gradients(engine, batch, parts: int, autocast, share: float = 1.0) -> Tensor:
    """Backward of the batch's mean loss (times `share`, this rank's weight in a distributed step) in `parts`
    micro-batches (rows, or whole requests), each weighted by its share of the impressions: the gradient of one big
    batch at a fraction of its activation memory. Returns the batch's mean loss (unweighted by `share`).
    Under DDP every rank runs the same number of backward passes (an empty part still runs, adding zeros) and
    gradients are reduced once, on the last."""
    distributed = isinstance(engine, nn.parallel.DistributedDataParallel)
    if parts <= 1 or batch is None:
        with autocast:
            loss = engine(batch)
        (loss * share if share != 1.0 else loss).backward()
        return loss.detach()
    total, n = 0.0, len(batch)
    pieces = torch.arange(batch.label.shape[0], device=batch.label.device).tensor_split(parts)
    for i, idx in enumerate(pieces):
        micro = batch.select(idx)
        if len(micro) == 0 and not distributed:
            continue
        sync = engine.no_sync() if distributed and i < len(pieces) - 1 else nullcontext()
        with sync:
            with autocast:
                loss = engine(micro if len(micro) else None) * (len(micro) / n)
            (loss * share if share != 1.0 else loss).backward()
        total = total + loss.detach()
    return total


def distill_loss(z_student: Tensor, z_teacher: Tensor, label: Tensor, temperature: float,
                 weight: float) -> Tensor:
    """loss1 + loss2 + weight * loss3 (SUAN eq. 17): both models fit the labels, and the student's softened
    probability fits the teacher's, whose soft label is detached (the teacher learns from labels only)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    soft = torch.sigmoid(z_teacher.detach() / temperature)
    return bce(z_student, label) + bce(z_teacher, label) + weight * bce(z_student / temperature, soft)


class Objective(nn.Module):
    """The training loss of a run: plain BCE, or online distillation when the config has a `distill` section.
    `load_len` is the history length batches are loaded with (the longer of student and teacher). A module, so
    DDP can wrap it whichever of the model's methods the loss calls; its parameters are `trainable`'s."""

    def __init__(self, model: nn.Module, cfg: RunConfig, spec, max_len: int, device, content=None):
        super().__init__()
        self.max_len, self.dist = max_len, cfg.distill
        self.load_len, self.teacher = max_len, None
        object.__setattr__(self, "model", model)     # not a submodule: `trainable` holds it
        self.listwise = trains_listwise(model, cfg.data.listwise)
        if self.dist is not None and self.listwise:
            raise ConfigError("online distillation trains pointwise: set data.listwise=false")
        if self.dist is not None:
            object.__setattr__(self, "teacher", build_model(spec, self.dist.teacher, content=content).to(device))
            self.load_len = max(max_len, self.dist.teacher_max_len or max_len)
        self.trainable = nn.ModuleDict({"student": model, "teacher": self.teacher}) if self.teacher is not None \
            else model
        self.sharded, self.standin = False, None   # row-sharded tables; a batch to run when a rank has none

    def forward(self, batch) -> Tensor:
        if batch is None and self.sharded:  # sharded lookups are collectives: run them on a stand-in, weight 0
            if self.standin is None:
                raise RuntimeError("a rank got no rows in its first step; use fewer ranks or a larger batch")
            return self.forward(self.standin) * 0.0
        if batch is None:  # a rank with nothing in this step: zero gradients, still part of the reduction
            return sum(p.sum() for p in self.parameters()) * 0.0
        if self.sharded and self.standin is None:
            self.standin = batch
        if self.listwise:  # BCE over every real candidate of every request
            logits = self.model.score_request(batch)
            return nn.functional.binary_cross_entropy_with_logits(logits[batch.mask].float(), batch.label[batch.mask])
        if self.teacher is None:
            return nn.functional.binary_cross_entropy_with_logits(self.model(batch).float(), batch.label)
        d = self.dist
        z_s = self.model(batch.with_max_len(self.max_len)).float()
        z_t = self.teacher(batch.with_max_len(d.teacher_max_len or self.max_len)).float()
        weight = d.weight if d.weight is not None else d.temperature
        return distill_loss(z_s, z_t, batch.label, d.temperature, weight)
