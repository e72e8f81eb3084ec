"""The common end of every preparer: one two-pass streaming writer.

A preparer turns its raw input into chunks (`Chunk`: raw-valued rows in stored order, a split index per row, the
behaviors their histories point at) and hands `write_chunks` a function that yields them. Pass 1 reads the chunks
once to fit the vocabularies and the numeric statistics on the train split; pass 2 reads them again to encode and
write the shards. Memory is bounded by one chunk, not by the row count. Preparers that hold their whole input
anyway (MovieLens, Taobao, Amazon, Ele.me) call `write_prepared`, which is the same writer over one chunk.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..schema import Schema
from .store import SPLITS, DatasetWriter, Layout, Vocab


@dataclass
class Chunk:
    """Rows in stored order and the behavior log their [hist_start, hist_end) ranges point into."""
    rows: dict[str, np.ndarray]  # raw values per non-behavioral field, plus 'label', 'time', 'user', 'request'
    split: np.ndarray            # 0/1/2 (train/valid/test) per row
    log: dict[str, np.ndarray]   # raw values per behavior field, plus 'time' (unix seconds); {} without a sequence
    hist_start: np.ndarray       # into this chunk's log
    hist_end: np.ndarray


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per column, merged chunk by chunk (Chan et al.), so the
    statistics stay accurate over many chunks; over one chunk they equal numpy's mean(0) and std(0) exactly."""
    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        nb = len(x)
        mb = x.sum(0) / nb
        d = x - mb
        m2b = (d * d).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta * delta * (self.n * nb / n)
        self.n = n

    def mean_std(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (1 where it is 0, or where nothing was seen)."""
        if self.n == 0 or width == 0:
            return np.zeros(width), np.ones(width)
        std = np.sqrt(self.m2 / self.n)
        return self.mean, np.where(std > 0, std, 1.0)


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


def _count(counter: Counter, values: np.ndarray) -> None:
    keys, counts = np.unique(values, return_counts=True)
    counter.update(dict(zip(keys.tolist(), counts.tolist())))


def _dense(ch: Chunk, lay: Layout) -> np.ndarray:
    if not lay.dense:
        return np.zeros((len(ch.split), 0))
    return np.stack([ch.rows[f].astype(np.float64) for f in lay.dense], 1)


def write_chunks(root: str | Path, *, schema: Schema, fp: str, chunks: Callable[[], Iterable[Chunk]],
                 content_raw: np.ndarray | None = None, bad_rows: dict | None = None, shard_rows: int = 1_000_000,
                 extra: dict | None = None) -> dict:
    """Write the chunks `chunks()` yields (called twice, yielding the same chunks each time) as a prepared dataset.

    Vocabularies are fitted on the train rows (a behavior field with its own vocabulary: on the behaviors that
    train rows' histories cover), numerics standardised with train statistics so every model sees unit-scale
    inputs. content_raw: [rows, dim] indexed by the raw integer value of the schema's content key. Impression
    and behavior times outside 1980-01-01 .. 2100-01-01 are refused (store.check_times) and `root` is replaced
    only when complete (store.DatasetWriter)."""
    lay = layout_of(schema)
    seq = schema.sequences[0] if schema.sequences else None
    categorical = {f.name for f in schema.categorical}
    own: dict[str, str] = {}  # behavior vocabulary fitted on the log -> the (first) behavior field that names it
    for f in seq.fields if seq else []:
        own.setdefault(lay.field_vocab[f"hist.{f.name}"], f.name)
    own = {v: f for v, f in own.items() if v not in categorical}

    counts = {f.name: Counter() for f in schema.categorical}
    hist_counts = {v: Counter() for v in own}
    moments = Moments()
    for ch in chunks():  # pass 1: fit
        train = ch.split == 0
        for f in schema.categorical:
            _count(counts[f.name], ch.rows[f.name][train])
        moments.add(_dense(ch, lay)[train])
        if own:
            covered = covered_by(ch.hist_start[train], ch.hist_end[train], len(ch.log["time"]))
            for vname, fname in own.items():
                _count(hist_counts[vname], ch.log[fname][covered])
    vocabs = {f.name: Vocab.fit(counts[f.name], f.min_freq) for f in schema.categorical}
    vocabs.update({v: Vocab.fit(hist_counts[v]) for v in own})
    mean, std = moments.mean_std(len(lay.dense))

    w = DatasetWriter(root, lay, shard_rows)
    with w.aborting():  # whatever fails from here on, `root` keeps its previous preparation
        for ch in chunks():  # pass 2: encode and write
            n_log = len(ch.log.get("time", ()))
            ids = np.stack([vocabs[lay.field_vocab[f"hist.{f}"]].encode(ch.log[f]) for f in lay.hist], 1) \
                if lay.hist else np.zeros((n_log, 0), np.int32)
            base = w.append_log(ids, ch.log.get("time", np.zeros(0, np.int64)))
            sparse = np.stack([vocabs[f].encode(ch.rows[f]) for f in lay.sparse], 1) if lay.sparse else \
                np.zeros((len(ch.split), 0), np.int32)
            dense = ((_dense(ch, lay) - mean) / std).astype(np.float32)
            for s, name in enumerate(SPLITS):
                m = ch.split == s
                w.append_rows(name, sparse=sparse[m], dense=dense[m], label=ch.rows["label"][m],
                              time=ch.rows["time"][m], user=ch.rows["user"][m], request=ch.rows["request"][m],
                              hist_start=ch.hist_start[m] + base, hist_end=ch.hist_end[m] + base)
        content = None
        if content_raw is not None and schema.content is not None:
            key_vocab = vocabs[schema.content.key]
            content = np.zeros((len(key_vocab), content_raw.shape[1]), np.float32)
            raw_ids = key_vocab.values.astype(np.int64)
            ok = (raw_ids >= 0) & (raw_ids < len(content_raw))
            content[2:][ok] = content_raw[raw_ids[ok]]
        extra = {**(extra or {}), "numeric_standardisation": {f: [float(a), float(b)]
                                                               for f, a, b in zip(lay.dense, mean, std)}}
        return w.finish(name=schema.name, fp=fp, vocabs=vocabs, max_len=seq.max_len if seq else 0,
                        schema=schema.to_dict(), content=content, bad_rows=bad_rows, extra=extra)


def write_prepared(root: str | Path, *, schema: Schema, fp: str, rows: dict[str, np.ndarray], split: np.ndarray,
                   log: dict[str, np.ndarray], hist_start: np.ndarray, hist_end: np.ndarray,
                   content_raw: np.ndarray | None = None, bad_rows: dict | None = None,
                   shard_rows: int = 1_000_000, extra: dict | None = None) -> dict:
    """`write_chunks` over one chunk, for preparers that hold their whole input (see `Chunk` for the arguments)."""
    chunk = Chunk(rows=rows, split=split, log=log, hist_start=hist_start, hist_end=hist_end)
    return write_chunks(root, schema=schema, fp=fp, chunks=lambda: [chunk], content_raw=content_raw,
                        bad_rows=bad_rows, shard_rows=shard_rows, extra=extra)


def time_split(n: int, fractions=(0.8, 0.1, 0.1), start: int = 0, stop: int | None = None) -> np.ndarray:
    """Split index by position of rows already in time order: first 80% train, next 10% valid, rest test.
    start/stop: only the rows [start, stop) of the n (a streaming preparer asks one chunk at a time)."""
    n_train = n * round(fractions[0] * 100) // 100
    n_valid = n * round(fractions[1] * 100) // 100
    pos = np.arange(start, n if stop is None else stop)
    return np.where(pos < n_train, 0, np.where(pos < n_train + n_valid, 1, 2)).astype(np.int8)


def request_ids(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """A request = the impressions of one user at one moment; ids number the (user, time) pairs in sorted order."""
    order = np.lexsort((time, user))
    u, t = user[order], time[order]
    first = np.ones(len(order), bool)
    first[1:] = (u[1:] != u[:-1]) | (t[1:] != t[:-1])
    ids = np.empty(len(order), np.int64)
    ids[order] = np.cumsum(first) - 1
    return ids


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
