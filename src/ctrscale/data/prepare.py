"""The common end of every preparer: fit vocabularies on the train split, encode, standardise numerics, write.

Preparers (MovieLens, generic schema-driven, synthetic) turn their raw input into raw-valued columns, a split
index per row and a behavior log with [start, end) ranges, then call `write_prepared`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import Schema
from .store import SPLITS, DatasetWriter, Layout, Vocab


def layout_of(schema: Schema) -> Layout:
    seq = schema.sequences[0] if schema.sequences else None
    field_vocab = {f.name: f.name for f in schema.categorical}
    if seq is not None:
        field_vocab.update({f"hist.{f.name}": f.vocab or f"hist.{f.name}" for f in seq.fields})
    return Layout(sparse=[f.name for f in schema.categorical], dense=[f.name for f in schema.numeric],
                  hist=[f.name for f in seq.fields] if seq else [], field_vocab=field_vocab,
                  roles={f.name: f.role for f in schema.fields})


def covered_by(starts: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """Mask of log positions inside any [start, end) range (difference array, no loop)."""
    d = np.zeros(size + 1, np.int64)
    np.add.at(d, starts, 1)
    np.add.at(d, ends, -1)
    return np.cumsum(d[:-1]) > 0


def write_prepared(root: str | Path, *, schema: Schema, fp: str, rows: dict[str, np.ndarray], split: np.ndarray,
                   log: dict[str, np.ndarray], hist_start: np.ndarray, hist_end: np.ndarray,
                   content_raw: np.ndarray | None = None, bad_rows: dict | None = None,
                   shard_rows: int = 1_000_000, extra: dict | None = None) -> dict:
    """rows: raw values per non-behavioral field plus 'label', 'time', 'user', 'request';
    split: 0/1/2 per row (train/valid/test), rows in the order they should be stored;
    log: raw values per behavior field plus 'time' (unix seconds, > 0). Impression and behavior times outside
    1980-01-01 .. 2100-01-01 are refused (store.check_times) and `root` is replaced only when complete
    (store.DatasetWriter)."""
    lay = layout_of(schema)
    train = split == 0
    vocabs = {f.name: Vocab.fit(rows[f.name][train], f.min_freq) for f in schema.categorical}
    seq = schema.sequences[0] if schema.sequences else None
    log_ids = np.zeros((len(log.get("time", [])), len(lay.hist)), np.int32)
    if seq is not None:
        in_train_hist = covered_by(hist_start[train], hist_end[train], len(log["time"]))
        for j, f in enumerate(seq.fields):
            vname = lay.field_vocab[f"hist.{f.name}"]
            if vname not in vocabs:
                vocabs[vname] = Vocab.fit(log[f.name][in_train_hist])
            log_ids[:, j] = vocabs[vname].encode(log[f.name])
    sparse = np.stack([vocabs[f].encode(rows[f]) for f in lay.sparse], 1) if lay.sparse else \
        np.zeros((len(split), 0), np.int32)
    dense = np.stack([rows[f].astype(np.float64) for f in lay.dense], 1) if lay.dense else \
        np.zeros((len(split), 0))
    # Numerics are standardised with train statistics so every model sees unit-scale inputs.
    mean = dense[train].mean(0) if train.any() and lay.dense else np.zeros(len(lay.dense))
    std = dense[train].std(0) if train.any() and lay.dense else np.ones(len(lay.dense))
    std = np.where(std > 0, std, 1.0)
    dense = ((dense - mean) / std).astype(np.float32)

    content = None
    if content_raw is not None and schema.content is not None:
        key_vocab = vocabs[schema.content.key]
        content = np.zeros((len(key_vocab), content_raw.shape[1]), np.float32)
        raw_ids = key_vocab.values.astype(np.int64)
        ok = (raw_ids >= 0) & (raw_ids < len(content_raw))
        content[2:][ok] = content_raw[raw_ids[ok]]

    w = DatasetWriter(root, lay, shard_rows)
    with w.aborting():  # whatever fails from here on, `root` keeps its previous preparation
        w.append_log(log_ids, log.get("time", np.zeros(0, np.int64)))
        for s, name in enumerate(SPLITS):
            m = split == s
            w.append_rows(name, sparse=sparse[m], dense=dense[m], label=rows["label"][m], time=rows["time"][m],
                          user=rows["user"][m], request=rows["request"][m], hist_start=hist_start[m],
                          hist_end=hist_end[m])
        max_len = seq.max_len if seq else 0
        extra = {**(extra or {}), "numeric_standardisation": {f: [float(a), float(b)]
                                                               for f, a, b in zip(lay.dense, mean, std)}}
        return w.finish(name=schema.name, fp=fp, vocabs=vocabs, max_len=max_len, schema=schema.to_dict(),
                        content=content, bad_rows=bad_rows, extra=extra)


def time_split(n: int, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Split index by position of rows already in time order: first 80% train, next 10% valid, rest test."""
    n_train = n * round(fractions[0] * 100) // 100
    n_valid = n * round(fractions[1] * 100) // 100
    out = np.full(n, 2, np.int8)
    out[:n_train] = 0
    out[n_train:n_train + n_valid] = 1
    return out


def request_ids(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """A request = the impressions of one user at one moment."""
    _, inv = np.unique(np.stack([user.astype(np.int64), time.astype(np.int64)], 1), axis=0, return_inverse=True)
    return inv.ravel().astype(np.int64)


def join_by_key(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, missing=-1) -> np.ndarray:
    """values[row of keys == wanted] for each wanted key, `missing` where it is absent (a vectorised join;
    values may be (K,) or (K, C))."""
    values = np.asarray(values)
    order = np.argsort(keys, kind="stable")
    k, v = np.asarray(keys)[order], values[order]
    out_shape = (len(wanted), *values.shape[1:])
    if not len(k):
        return np.full(out_shape, missing, dtype=values.dtype)
    pos = np.clip(np.searchsorted(k, wanted), 0, len(k) - 1)
    hit = (k[pos] == wanted).reshape(-1, *([1] * (values.ndim - 1)))
    return np.where(hit, v[pos], missing)
