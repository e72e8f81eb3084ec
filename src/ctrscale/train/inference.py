"""Scoring with a trained model: predictions for a whole split, its metrics, and a finished run loaded for serving."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import metrics
from ..data.catalog import open_run_data
from ..data.loader import Loader, LoaderConfig
from ..errors import RunError
from ..models.base import CTRModel
from ..models.registry import build_model
from .config import RunConfig, load_config
from .device import autocast_for, resolve_device
from .distributed import World
from .runs import load_checkpoint
from .sharding import shards_of


def trains_listwise(model: CTRModel, setting: bool | None = None) -> bool:
    """data.listwise when set, else the model's own preference (listwise models score whole requests)."""
    return model.needs.listwise if setting is None else setting


@torch.no_grad()
def predict(model: nn.Module, data, split: str, max_len: int, batch_size: int, device: torch.device,
            precision: str = "auto", num_workers: int = 0, world: World | None = None,
            fraction: float = 1.0) -> dict[str, np.ndarray]:
    """Probabilities for a whole split (or, fraction < 1, for a fixed random share of its requests), in stored
    order, with the rows' indices, labels, user and request keys. Rows are scored in
    batches of similar history length (cheaper with trimmed padding) and put back in order; a batch holds at most
    `batch_size` rows and batch_size x 64 behavior tokens, so long histories come in smaller batches.
    Distributed: each rank scores every world.size-th batch and all ranks receive the whole split."""
    world = world or World()
    was = model.training
    model.eval()
    listwise = trains_listwise(model)  # a request's history encoded once for all its candidates
    loader = Loader(data, split, LoaderConfig(batch_size=batch_size, max_len=max_len, shuffle=False,
                                              num_workers=num_workers, length_window=16, listwise=listwise,
                                              max_tokens=batch_size * 64, cand_seq=model.needs.cand_seq,
                                              fraction=fraction))
    everything = loader.plan(0)
    plan = everything[world.rank::world.size]
    # sharded tables look rows up with collectives: every rank scores as many batches (extras discarded)
    extra = -(-len(everything) // world.size) - len(plan) if world.distributed and shards_of(model) else 0
    rows = np.concatenate(plan) if plan else np.zeros(0, np.int64)
    probs, labels, users, requests = [], [], [], []
    for i, batch in enumerate(loader.batches(plan + everything[:1] * extra)):
        batch = batch.to(device)
        with autocast_for(device, precision):
            logits = model.score_request(batch)[batch.mask] if listwise else model(batch)
        if i >= len(plan):
            continue
        if listwise:
            batch = batch.flat()
        probs.append(torch.sigmoid(logits.float()).cpu())
        labels.append(batch.label.cpu())
        users.append(batch.user.cpu())
        requests.append(batch.request.cpu())
    model.train(was)
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0)  # noqa: E731
    parts = world.gather((rows, cat(probs), cat(labels), cat(users), cat(requests)))
    rows = np.concatenate([p[0] for p in parts])
    order = np.argsort(rows, kind="stable")
    in_order = lambda k: np.concatenate([p[k] for p in parts])[order]  # noqa: E731
    return {"row": rows[order], "prob": in_order(1), "label": in_order(2), "user": in_order(3),
            "request": in_order(4)}


def evaluate(model, data, split, max_len, batch_size, device, precision="auto", world: World | None = None) -> dict:
    p = predict(model, data, split, max_len, batch_size, device, precision, world=world)
    return checked_metrics(p, split)


def write_predictions(p: dict, path: str | Path) -> None:
    """predict()'s output as a Parquet table (row index in the split, request and user keys, label, probability)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table({k: p[k] for k in ("row", "request", "user", "label", "prob")}), tmp)
    tmp.replace(path)


def checked_metrics(p: dict, split: str) -> dict:
    """metrics.evaluate, refusing non-finite predictions (a diverged model) with a clear error."""
    bad = int((~np.isfinite(p["prob"])).sum())
    if bad:
        raise RunError(f"{bad} of {len(p['prob'])} predictions on the {split} split are not finite: the model's "
                       f"weights have diverged; train again with a lower optim.lr")
    return metrics.evaluate(p["label"], p["prob"], p["user"])


def load_trained(run: str | Path, checkpoint: str = "best", serving: bool = True
                 ) -> tuple[RunConfig, object, CTRModel, torch.device]:
    """A finished (or stopped) run's config, dataset, and model with its best.pt / last.pt weights loaded, in eval
    mode and (serving=True) with its serving caches precomputed (`CTRModel.for_serving`)."""
    run = Path(run)
    if not (run / "config.yaml").exists():
        raise RunError(f"{run}: not a run folder (no config.yaml); give the folder a `ctrscale train` wrote")
    if not (run / f"{checkpoint}.pt").exists():
        hint = ("the run stopped before its first validation; use --checkpoint last for its latest weights, or "
                "finish it with `ctrscale train --config {0}/config.yaml --resume`" if checkpoint == "best" else
                "the run has not saved a checkpoint yet").format(run)
        raise RunError(f"{run}: no {checkpoint}.pt ({hint})")
    cfg = load_config(run / "config.yaml")
    data = open_run_data(cfg.data)
    device = resolve_device(cfg.train.device)
    model = build_model(data.spec, cfg.model, content=data.content()).to(device)
    state = load_checkpoint(run / f"{checkpoint}.pt", map_location=device)
    state = state["model"] if "model" in state else state
    if cfg.distill is not None and checkpoint == "last":  # last.pt holds student and teacher together
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    model.load_state_dict(state)
    model.eval()
    return cfg, data, model.for_serving() if serving else model, device
