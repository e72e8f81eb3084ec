"""Prepared rows back to raw requests (the offline-equality tests and the latency benchmark send these), and
run folders with random weights to export.

Every id is decoded through its vocabulary to the raw value preparation fed it (sent as text, as a client's logs
hold it); an out-of-vocabulary id becomes a value no vocabulary holds, so it maps back to OOV; numerics are
un-standardised with the train statistics; a request's history is the user's whole history before it (what the
GSU searches offline), oldest first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.dataset import PreparedDataset
from ..data.store import OOV

UNSEEN = "<unseen value>"


class RawDecoder:
    def __init__(self, data: PreparedDataset):
        self.data, self.spec = data, data.spec
        names = sorted(set(self.spec.field_vocab.values()))
        self.values = {n: np.array([str(v) for v in data.vocab(n).values] + [UNSEEN], dtype=object)
                       for n in names}  # the last entry stands for the OOV id
        self.stats = data.report.get("numeric_standardisation", {})

    def ids(self, field: str, ids: np.ndarray) -> list:
        """Raw values of ids of `field` (a field name, or 'hist.<f>' for a behavior field)."""
        values = self.values[self.spec.field_vocab[field]]
        ids = np.asarray(ids, np.int64)
        return values[np.where(ids > OOV, ids - 2, len(values) - 1)].tolist()

    def dense(self, field: str, x: np.ndarray) -> list[float]:
        mean, std = self.stats[field]
        return (np.asarray(x, np.float64) * std + mean).tolist()

    def requests(self, split: str, rows: np.ndarray) -> list[tuple[dict, np.ndarray]]:
        """The requests of `rows` (grouped by request key, first appearance order): (raw request, its rows in
        candidate order)."""
        sp, spec = self.data.split(split), self.spec
        rows = np.asarray(rows, np.int64)
        cols = sp.take(rows)
        _, first, inverse = np.unique(cols["request"], return_index=True, return_inverse=True)
        out = []
        for g in np.argsort(first, kind="stable"):
            members = np.flatnonzero(inverse.ravel() == g)
            i = members[0]
            sparse = {f: cols["sparse"][members, j] for j, f in enumerate(spec.sparse)}
            dense = {f: cols["dense"][members, j] for j, f in enumerate(spec.dense)}
            one = lambda f: (self.ids(f, sparse[f][:1]) if f in sparse else self.dense(f, dense[f][:1]))[0]  # noqa
            many = lambda f: self.ids(f, sparse[f]) if f in sparse else self.dense(f, dense[f])  # noqa: E731
            by_role = lambda role: [f for f in (*spec.sparse, *spec.dense) if spec.roles[f] == role]  # noqa: E731
            a, b = int(cols["hist_start"][i]), int(cols["hist_end"][i])
            log_ids, log_time = np.asarray(self.data.log_ids[a:b]), np.asarray(self.data.log_time[a:b])
            req = {"request_id": str(int(cols["request"][i])),
                   "user": {f: one(f) for f in by_role("user")},
                   "context": {f: one(f) for f in by_role("context")},
                   "time": int(cols["time"][i]),
                   "candidates": {f: many(f) for f in by_role("item")}}
            if spec.hist:
                req["history"] = {**{f: self.ids(f"hist.{f}", log_ids[:, j]) for j, f in enumerate(spec.hist)},
                                  "time": log_time.tolist()}
            out.append((req, rows[members]))
        return out


def random_run(out_dir: str | Path, data: PreparedDataset, model: str, *overrides: str, seed: int = 0) -> Path:
    """A run folder (config.yaml + best.pt) as `ctrscale train` leaves one, with random weights moved off their
    initial values (zero biases, unit norms): equality and latency do not need trained weights, and making one
    costs no training. `overrides` are run-config `key=value`s (name= names the folder)."""
    from ..models.registry import build_model
    from ..train.config import load_config, save_config
    from ..train.runs import save_checkpoint
    cfg = load_config(None, [f"name={model}", f"out_dir={out_dir}", f"model.name={model}", f"data.path={data.root}",
                             *overrides])
    data = PreparedDataset(data.root).select_fields(cfg.data.fields, cfg.data.drop_fields)  # as the run will see it
    torch.manual_seed(seed)
    net = build_model(data.spec, cfg.model, content=data.content())
    with torch.no_grad():
        for p in net.parameters():
            p += 0.05 * torch.randn_like(p)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    save_checkpoint({"model": net.state_dict()}, cfg.run_dir / "best.pt")
    return cfg.run_dir
