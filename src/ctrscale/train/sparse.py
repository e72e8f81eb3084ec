"""Multi-epoch "asynchronous" training (EST paper, section 5.5) and warm starts of the sparse parameters.

Sparse parameters are the embedding tables (`models.tables.embedding_params`); everything else is dense. With
`train.sparse_reset`, the tables are snapshotted before the first epoch (after an optional warm start from an
earlier model, `train.sparse_init`) and, at the start of every later epoch, put back to that snapshot with their
optimizer state cleared, while the dense parameters and their optimizer state carry on. The embeddings, which
memorise individual ids, see each impression once; the dense network sees the data several times. Plain
multi-epoch training instead over-fits from the second epoch (the "one-epoch" effect).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..models.tables import embedding_params
from ..errors import ConfigError


def sparse_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return embedding_params(model)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in sparse_parameters(model).items()}


def reset(model: nn.Module, opt: torch.optim.Optimizer, saved: dict[str, torch.Tensor]) -> int:
    """Sparse parameters back to `saved`, their optimizer state dropped (Adam starts them afresh); returns how
    many tensors were reset. Dense parameters and their optimizer state are left alone."""
    params = sparse_parameters(model)
    missing = sorted(set(params) - set(saved))
    if missing:
        raise KeyError(f"sparse snapshot lacks {missing[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device))
            opt.state.pop(p, None)
    return len(params)


def warm_start(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the embedding tables of an earlier model (a best.pt / last.pt, or a run folder holding best.pt)
    into this one, matched by name and shape; returns the names copied. Distilled last.pt files hold
    'student.'/'teacher.' prefixes: the student's tables are used."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"train.sparse_init: {path} does not exist")
    from .runs import load_checkpoint
    state = load_checkpoint(path, map_location="cpu")
    state = state.get("model", state)
    if any(k.startswith("student.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    copied = []
    with torch.no_grad():
        for name, p in sparse_parameters(model).items():
            src = state.get(name)
            if src is not None and tuple(src.shape) == tuple(p.shape):
                p.copy_(src)
                copied.append(name)
    if not copied:
        raise ConfigError(f"train.sparse_init: no embedding table of {path} matches this model by name and shape")
    return copied
