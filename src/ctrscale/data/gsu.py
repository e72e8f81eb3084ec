"""The general search unit (GSU) as a data transform: each impression's candidate-specific behaviors R_c.

R_c = the K behaviors of the user's long history (everything before the impression, or its `source_len` most
recent behaviors) that are closest to the candidate: by cosine of the frozen content vectors ("soft search",
by="content", exact ties to the most recent), or the most recent ones sharing the candidate's value of a
behavior field ("hard search", e.g. by="genre"; by="category" picks the coarsest one, see category_field). The
chosen behaviors keep their time order and are right-aligned like every sequence here (padding, time 0, on the
left), so a model reads R_c as it reads R_u.

Vectorised over a whole batch: one (B, W) score matrix over the batch's widest history, one argpartition. The
cosine of two items is read from an item x item table (built once, when the item vocabulary is small enough),
else computed from the gathered vectors in row chunks. The loader searches each split once, in blocks of rows,
and keeps the chosen log positions beside the prepared data; batches then only index them.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from ..batch import CandidateSequence  # noqa: F401  (re-exported)
from ..errors import ConfigError

CACHE_VERSION = 1
SEARCH_ROWS = 4096       # rows searched at once when a split is searched whole
TABLE_MAX_ITEMS = 8192   # an item x item cosine table up to 8192^2 float32 = 256 MiB
CHUNK_FLOATS = 1 << 24   # the other path gathers at most this many content floats at once


def category_field(spec) -> str:
    """The behavior field hard search reads when asked for by="category": the behavior field of that name if there
    is one, else, of the behavior fields a candidate field shares a vocabulary with, other than the content key,
    the one with the smallest vocabulary (the coarsest: ml1m's genre)."""
    if "category" in spec.hist:
        return "category"
    aligned = [h for h, col in zip(spec.hist, spec.hist_to_sparse)
               if col >= 0 and spec.sparse[col] != spec.content_key]
    if not aligned:
        raise ConfigError(f"{spec.name}: hard search by='category' needs a behavior field, other than the item id, "
                          f"that a candidate field shares a vocabulary with; have {list(spec.hist)}")
    return min(aligned, key=lambda h: spec.vocab_sizes[spec.field_vocab[f"hist.{h}"]])


class Searcher:
    """Picks R_c for rows of one prepared dataset (holds its content table and the item x item cosines)."""

    def __init__(self, data, cfg: CandidateSequence):
        self._setup(data.spec, cfg, data.content)
        self.data, self.log_ids, self.log_time = data, data.log_ids, data.log_time
        self._splits: dict[str, np.ndarray] = {}

    @classmethod
    def standalone(cls, spec, cfg: CandidateSequence, content: np.ndarray | None) -> "Searcher":
        """A searcher over no prepared dataset (serving): `on_log` gives it each request's history."""
        self = cls.__new__(cls)
        self._setup(spec, cfg, lambda: content)
        self.data, self._splits = None, {}
        self.log_ids, self.log_time = np.zeros((0, len(spec.hist)), np.int64), np.zeros(0, np.int64)
        return self

    def on_log(self, log_ids: np.ndarray, log_time: np.ndarray) -> "Searcher":
        """This searcher over another behavior log (one request's history); the content tables are shared."""
        out = copy.copy(self)
        out.log_ids, out.log_time, out.data, out._splits = log_ids, log_time, None, {}
        return out

    def _setup(self, spec, cfg: CandidateSequence, content_of) -> None:
        self.cfg = cfg
        if cfg.by == "content":
            if spec.content_key is None:
                raise ConfigError(f"{spec.name}: soft search (by='content') needs a content table in the schema")
            item_col = spec.sparse.index(spec.content_key)
            self.field = next((j for j, a in enumerate(spec.hist_to_sparse) if a == item_col), -1)
            if self.field < 0:
                raise ConfigError(f"{spec.name}: no behavior field carries the content key {spec.content_key!r}")
            content = content_of().astype(np.float32)
            norm = np.linalg.norm(content, axis=1, keepdims=True)
            self.content = content / np.maximum(norm, 1e-12)
            self.table = self.content @ self.content.T if len(content) <= TABLE_MAX_ITEMS else None
        else:
            by = category_field(spec) if cfg.by == "category" else cfg.by
            if by not in spec.hist:
                raise ConfigError(f"{spec.name}: hard search field {by!r} is not a behavior field; "
                                 f"have {list(spec.hist)} (or by='content' or by='category')")
            self.field = spec.hist.index(by)
        self.cand_col = spec.hist_to_sparse[self.field]
        if self.cand_col < 0:
            raise ConfigError(f"{spec.name}: behavior field {spec.hist[self.field]!r} has no candidate field "
                             f"sharing its vocabulary")

    def __call__(self, sparse: np.ndarray, hist_start: np.ndarray, hist_end: np.ndarray) -> dict[str, np.ndarray]:
        """-> cand_hist (B, K, F_hist) ids and cand_hist_time (B, K) seconds, right-aligned, time-ordered."""
        return self.gather(self.positions(sparse, hist_start, hist_end))

    def take(self, split: str, idx: np.ndarray) -> dict[str, np.ndarray]:
        """R_c of rows idx of a split, from the split's positions searched once (see split_positions)."""
        return self.gather(np.asarray(self.split_positions(split)[idx]))

    def split_positions(self, split: str) -> np.ndarray:
        """(N, K) log positions of every row's R_c (-1 = padding), searched once per split and kept on disk
        beside the prepared data (<root>/gsu/<setting>/<split>.npy, written atomically) when it is writable:
        the search reads every row's whole history, the loader then only indexes."""
        if split not in self._splits:
            c = self.cfg
            by = c.by if c.by == "content" else self.data.spec.hist[self.field]  # "category" resolved: a field
            # selection that changes what it means cannot reuse another's search
            key = f"{by}-k{c.length}-s{c.source_len}-v{CACHE_VERSION}-{self.data.meta.get('fingerprint', '')}"
            path = Path(self.data.root) / "gsu" / key / f"{split}.npy"
            if path.exists():
                self._splits[split] = np.load(path, mmap_mode="r")
            else:
                sp = self.data.split(split)
                starts, ends = sp.column("hist_start"), sp.column("hist_end")
                out = np.empty((len(sp), c.length), np.int64)
                for a in range(0, len(sp), SEARCH_ROWS):
                    rows = np.arange(a, min(a + SEARCH_ROWS, len(sp)))
                    out[rows] = self.positions(sp.take(rows)["sparse"], starts[rows], ends[rows])
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(path.name + ".tmp.npy")
                    np.save(tmp, out)
                    os.replace(tmp, path)
                except OSError:  # read-only data: keep it in memory for this process
                    pass
                self._splits[split] = out
        return self._splits[split]

    def positions(self, sparse: np.ndarray, hist_start: np.ndarray, hist_end: np.ndarray) -> np.ndarray:
        """(B, K) log positions of the chosen behaviors, time-ordered and right-aligned; -1 marks padding."""
        k = self.cfg.length
        start = hist_start.astype(np.int64)
        if self.cfg.source_len:
            start = np.maximum(start, hist_end - self.cfg.source_len)
        width = max(k, int((hist_end - start).max(initial=0)))
        pos = hist_end[:, None] - width + np.arange(width)              # (B, W) log positions, oldest first
        valid = pos >= start[:, None]
        pos = np.where(valid, pos, 0)
        key = np.asarray(self.log_ids[pos.ravel(), self.field]).reshape(pos.shape) if len(self.log_ids) else \
            np.zeros(pos.shape, np.int64)
        cand = sparse[:, self.cand_col].astype(np.int64)
        # One int64 key per behavior: the float32 cosine's order-preserving bits, then the position, so exact
        # ties go to the most recent; hard search ranks matches by position alone.
        recency = np.broadcast_to(np.arange(width, dtype=np.int64), pos.shape)
        if self.cfg.by == "content":
            bits = self._cosine(cand, key).astype(np.float32).view(np.int32)
            score = (np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).astype(np.int64) << 32) + recency
        else:
            score = recency.copy()
            valid &= key == cand[:, None]
        score = np.where(valid, score, np.iinfo(np.int64).min)
        top = np.argpartition(score, width - k, axis=1)[:, width - k:]   # the K best, unordered
        top.sort(axis=1)                                                 # back into time order
        chosen_ok = np.take_along_axis(valid, top, 1)
        # right-align: the invalid picks (fewer than K candidates) move to the left, the valid keep time order
        order = np.argsort(chosen_ok, axis=1, kind="stable")
        top, chosen_ok = np.take_along_axis(top, order, 1), np.take_along_axis(chosen_ok, order, 1)
        return np.where(chosen_ok, np.take_along_axis(pos, top, 1), -1)

    def gather(self, log_pos: np.ndarray) -> dict[str, np.ndarray]:
        ok = log_pos >= 0
        at = np.where(ok, log_pos, 0).ravel()
        if len(self.log_time) == 0:
            return {"cand_hist": np.zeros((*log_pos.shape, self.log_ids.shape[1]), np.int32),
                    "cand_hist_time": np.zeros(log_pos.shape, np.int64)}
        ids = np.asarray(self.log_ids[at]).reshape(*log_pos.shape, -1)
        times = np.asarray(self.log_time[at]).reshape(log_pos.shape)
        return {"cand_hist": ids * ok[..., None], "cand_hist_time": times * ok}

    def _cosine(self, cand: np.ndarray, key: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[cand[:, None], key]
        out = np.empty(key.shape, np.float32)
        rows = max(1, CHUNK_FLOATS // max(1, key.shape[1] * self.content.shape[1]))
        for a in range(0, len(key), rows):
            out[a:a + rows] = np.einsum("bwd,bd->bw", self.content[key[a:a + rows]], self.content[cand[a:a + rows]])
        return out
