"""Helpers the per-model test files share: build a model with the dataset's content, load a batch as the recipe
would for it, and move parameters off their initial values."""
from __future__ import annotations

import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model


def build(data, name, seed=0, **cfg):
    torch.manual_seed(seed)
    return build_model(data.spec, {"name": name, **cfg}, content=data.content()).eval()


def batch(data, model, n=32, max_len=20, split="valid", listwise=False):
    """Batches as the recipe loads them for this model (with candidate-specific behaviors if it reads them)."""
    cfg = LoaderConfig(batch_size=n, max_len=max_len, listwise=listwise, cand_seq=model.needs.cand_seq)
    return next(iter(Loader(data, split, cfg, seed=2)))


def jitter(module, scale=0.1):
    """Move every parameter off its initial value (zero biases, unit norms) so a test sees all of them."""
    with torch.no_grad():
        for p in module.parameters():
            p += scale * torch.randn_like(p)
    return module
