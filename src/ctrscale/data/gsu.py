"""The general search unit (GSU) as a data transform: each impression's candidate-specific behaviors R_c.

R_c = the K behaviors of the user's long history (everything before the impression, or its `source_len` most
recent behaviors) that are closest to the candidate: by cosine of the frozen content vectors ("soft search",
by="content", exact ties to the most recent), or the most recent ones sharing the candidate's value of a
behavior field ("hard search", e.g. by="genre"). The chosen behaviors keep their time order and are
right-aligned like every sequence here (padding, time 0, on the left), so a model reads R_c as it reads R_u.

Vectorised over a whole batch: one (B, W) score matrix over the batch's widest history, one argpartition. The
cosine of two items is read from an item x item table (built once, when the item vocabulary is small enough),
else computed from the gathered vectors in row chunks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TABLE_MAX_ITEMS = 8192   # an item x item cosine table up to 8192^2 float32 = 256 MiB
CHUNK_FLOATS = 1 << 24   # the other path gathers at most this many content floats at once


@dataclass(frozen=True)
class CandidateSequence:
    length: int = 20         # K_c
    by: str = "content"      # "content" (top cosine to the candidate) or a behavior field name (same value)
    source_len: int = 0      # search the most recent this-many behaviors; 0 = the whole history

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"candidate sequence length must be >= 1, got {self.length}")
        if self.source_len < 0:
            raise ValueError(f"candidate sequence source_len must be >= 0, got {self.source_len}")


class Searcher:
    """Picks R_c for rows of one prepared dataset (holds its content table and the item x item cosines)."""

    def __init__(self, data, cfg: CandidateSequence):
        spec = data.spec
        self.cfg, self.log_ids, self.log_time = cfg, data.log_ids, data.log_time
        if cfg.by == "content":
            if spec.content_key is None:
                raise ValueError(f"{spec.name}: soft search (by='content') needs a content table in the schema")
            self.field = spec.hist.index(spec.content_key) if spec.content_key in spec.hist else -1
            if self.field < 0:
                raise ValueError(f"{spec.name}: no behavior field carries the content key {spec.content_key!r}")
            content = data.content().astype(np.float32)
            norm = np.linalg.norm(content, axis=1, keepdims=True)
            self.content = content / np.maximum(norm, 1e-12)
            self.table = self.content @ self.content.T if len(content) <= TABLE_MAX_ITEMS else None
        else:
            if cfg.by not in spec.hist:
                raise ValueError(f"{spec.name}: hard search field {cfg.by!r} is not a behavior field; "
                                 f"have {list(spec.hist)} (or by='content')")
            self.field = spec.hist.index(cfg.by)
        self.cand_col = spec.hist_to_sparse[self.field]
        if self.cand_col < 0:
            raise ValueError(f"{spec.name}: behavior field {spec.hist[self.field]!r} has no candidate field "
                             f"sharing its vocabulary")

    def __call__(self, sparse: np.ndarray, hist_start: np.ndarray, hist_end: np.ndarray) -> dict[str, np.ndarray]:
        """-> cand_hist (B, K, F_hist) ids and cand_hist_time (B, K) seconds, right-aligned, time-ordered."""
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
        log_pos = np.take_along_axis(pos, top, 1)
        ids = np.asarray(self.log_ids[log_pos.ravel()]).reshape(*log_pos.shape, -1) if len(self.log_ids) else \
            np.zeros((*log_pos.shape, self.log_ids.shape[1]), np.int32)
        times = np.asarray(self.log_time[log_pos.ravel()]).reshape(log_pos.shape) if len(self.log_time) else \
            np.zeros(log_pos.shape, np.int64)
        return {"cand_hist": ids * chosen_ok[..., None], "cand_hist_time": times * chosen_ok}

    def _cosine(self, cand: np.ndarray, key: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[cand[:, None], key]
        out = np.empty(key.shape, np.float32)
        rows = max(1, CHUNK_FLOATS // max(1, key.shape[1] * self.content.shape[1]))
        for a in range(0, len(key), rows):
            out[a:a + rows] = np.einsum("bwd,bd->bw", self.content[key[a:a + rows]], self.content[cand[a:a + rows]])
        return out
