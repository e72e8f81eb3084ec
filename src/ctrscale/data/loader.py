"""Batches from prepared shards: pointwise (impressions) or listwise (whole requests).

The order of an epoch is a pure function of (seed, epoch), and each batch is gathered from its own index array,
so a run restarted at step k of an epoch sees exactly the batches it would have seen (exact resume), with or
without worker processes.

Long histories: each batch is cut to its own longest history (`trim`), and `length_window` > 0 groups rows of
similar history length: the shuffled rows are sorted by length within windows of that many batches, cut into
batches, and the batches shuffled again. Attention cost then follows the typical history, not the longest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..batch import Batch, RequestBatch
from .dataset import PreparedDataset
from .gsu import CandidateSequence


def _to_batch(rows: dict[str, np.ndarray]) -> Batch:
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in rows.items()}
    return Batch(sparse=t["sparse"].long(), dense=t["dense"].float(), hist=t["hist"].long(),
                 hist_time=t["hist_time"].long(), time=t["time"].long(), label=t["label"].float(),
                 user=t["user"].long(), request=t["request"].long(),
                 cand_hist=t["cand_hist"].long() if "cand_hist" in t else None,
                 cand_hist_time=t["cand_hist_time"].long() if "cand_hist_time" in t else None)


class _Gather(Dataset):
    """Index array -> Batch (or RequestBatch). Used as a map-style dataset whose items are whole batches."""

    def __init__(self, data: PreparedDataset, split: str, max_len: int, plan: list[np.ndarray], listwise: bool,
                 trim: bool, cand_seq: CandidateSequence | None):
        self.data, self.split, self.max_len, self.plan, self.listwise = data, split, max_len, plan, listwise
        self.trim = trim
        self.searcher = data.searcher(cand_seq) if cand_seq is not None else None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        if len(self.plan[i]) == 0:
            return None
        batch = _to_batch(self.data.gather(self.split, self.plan[i], self.max_len, self.trim, self.searcher))
        return RequestBatch.from_batch(batch) if self.listwise else batch


@dataclass
class LoaderConfig:
    batch_size: int = 1024
    max_len: int = 50
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = False
    # Listwise: a batch holds whole requests, up to batch_size impressions (a larger request comes alone),
    # its rows in the order RequestBatch.flat() restores.
    listwise: bool = False
    trim: bool = True         # cut each batch's history padding to its longest history
    length_window: int = 0    # > 0: batch rows of similar history length, sorted within windows of this many batches
    max_tokens: int = 0       # > 0: also at most this many rows (requests) x trimmed history width per batch
    cand_seq: CandidateSequence | None = None  # add each row's candidate-specific behaviors R_c (the GSU)
    fraction: float = 1.0     # < 1: only this share of the split's requests (whole requests, a fixed random draw)
    subsample_seed: int = 0   # the draw; a smaller fraction with the same seed keeps a subset of a larger one's


def subsample_rows(requests: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices of the requests kept: request r stays when its uniform draw u_r < fraction, so for one
    seed the kept sets are nested in the fraction and a request is never split."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(len(requests))
    uniq, inv = np.unique(requests, return_inverse=True)
    u = np.random.default_rng(seed).random(len(uniq))
    return np.flatnonzero(u[inv.ravel()] < fraction)


class Loader:
    """Iterates a split in batches. `epoch` picks the shuffle; `start_step` skips batches already consumed."""

    def __init__(self, data: PreparedDataset, split: str, cfg: LoaderConfig, seed: int = 0):
        self.data, self.split, self.cfg, self.seed = data, split, cfg, seed
        n = len(data.split(split))
        needs_requests = cfg.listwise or cfg.fraction < 1
        self._req = data.split(split).column("request") if needs_requests else None
        self.rows = subsample_rows(self._req, cfg.fraction, cfg.subsample_seed) if cfg.fraction < 1 else np.arange(n)
        self.n = len(self.rows)
        if cfg.listwise:
            self._req_order = self.rows[np.argsort(self._req[self.rows], kind="stable")]
            _, self._req_counts = np.unique(self._req[self._req_order], return_counts=True)
            self._req_starts = np.concatenate([[0], np.cumsum(self._req_counts)[:-1]])

    def plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        bs = self.cfg.batch_size
        if not self.cfg.listwise:
            order = self.rows[rng.permutation(self.n)] if self.cfg.shuffle else self.rows
            if self.cfg.length_window > 0:
                lengths = self.data.history_lengths(self.split, self.cfg.max_len)[order]
                window = np.arange(self.n) // (self.cfg.length_window * bs)
                order = order[np.lexsort((lengths, window))]
            stop = (self.n // bs) * bs if self.cfg.drop_last else self.n
            batches = [order[i:i + bs] for i in range(0, stop, bs)]
            if self.cfg.max_tokens > 0:
                lengths = self.data.history_lengths(self.split, self.cfg.max_len)
                batches = [part for b in batches for part in self._split_by_tokens(b, lengths[b])]
            if self.cfg.length_window > 0 and self.cfg.shuffle:
                batches = [batches[i] for i in rng.permutation(len(batches))]
            return batches
        reqs = rng.permutation(len(self._req_counts)) if self.cfg.shuffle else np.arange(len(self._req_counts))
        if self.cfg.length_window > 0:  # requests of similar history length together (all rows share it)
            lengths = self.data.history_lengths(self.split, self.cfg.max_len)[self._req_order[self._req_starts]]
            before = np.cumsum(self._req_counts[reqs]) - self._req_counts[reqs]
            reqs = reqs[np.lexsort((lengths[reqs], before // (self.cfg.length_window * bs)))]
        # Greedy packing of whole requests into batches of at most bs impressions (and, with max_tokens, at most
        # that many requests x trimmed width: the history is encoded once per request).
        sizes = self._req_counts[reqs]
        cum = np.cumsum(sizes)
        if self.cfg.max_tokens > 0:
            req_len = self.data.history_lengths(self.split, self.cfg.max_len)[self._req_order[self._req_starts]]
            width = np.maximum(8, -(-req_len[reqs] // 8) * 8)
        bounds = [0]
        while bounds[-1] < len(reqs):
            a = bounds[-1]
            nxt = int(np.searchsorted(cum, (cum[a - 1] if a else 0) + bs, side="right"))
            if self.cfg.max_tokens > 0:  # a batch holds at most bs requests: look no further
                cost = np.arange(1, min(bs, len(reqs) - a) + 1) * np.maximum.accumulate(width[a:a + bs])
                nxt = min(nxt, a + int(np.searchsorted(cost, self.cfg.max_tokens, side="right")))
            bounds.append(max(nxt, a + 1))
        out = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            starts, counts = self._req_starts[reqs[a:b]], self._req_counts[reqs[a:b]]
            rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            out.append(self._req_order[rows])
        if self.cfg.drop_last and out and len(out[-1]) < bs:
            out = out[:-1]
        if self.cfg.length_window > 0 and self.cfg.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        # Rows in request-key order within a batch: the order RequestBatch.flat() gives back.
        return [b[np.argsort(self._req[b], kind="stable")] for b in out]

    def _split_by_tokens(self, rows: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Cut a batch (rows sorted by history length, as length windows leave them) into pieces whose rows x
        trimmed width stays within max_tokens: long-history batches get fewer rows, short ones keep them all."""
        width = np.maximum.accumulate(np.maximum(8, -(-lengths // 8) * 8))  # a piece is as wide as its longest row
        out, start = [], 0
        while start < len(rows):
            cost = (np.arange(start, len(rows)) - start + 1) * width[start:]
            stop = start + max(1, int(np.searchsorted(cost, self.cfg.max_tokens, side="right")))
            out.append(rows[start:stop])
            start = stop
        return out

    def steps_per_epoch(self) -> int:
        return len(self.plan(0))

    def epoch(self, epoch: int = 0, start_step: int = 0, world=None):
        """The epoch's batches from `start_step` on; with a distributed `world` (train.distributed.World), this
        rank's part of each global batch (an empty part comes as None)."""
        plan = self.plan(epoch)[start_step:]
        if world is not None and world.distributed:
            plan = [shard(b, world, self._req[b] if self.cfg.listwise else None) for b in plan]
        return self.batches(plan)

    def batches(self, plan: list[np.ndarray]):
        """Batches of the given row-index arrays, in that order."""
        ds = _Gather(self.data, self.split, self.cfg.max_len, plan, self.cfg.listwise, self.cfg.trim,
                     self.cfg.cand_seq)
        if self.cfg.num_workers == 0:
            return (ds[i] for i in range(len(ds)))
        return iter(DataLoader(ds, batch_size=None, shuffle=False, num_workers=self.cfg.num_workers,
                               persistent_workers=False, prefetch_factor=4))

    def __iter__(self):
        return self.epoch(0)


def shard(rows: np.ndarray, world, requests: np.ndarray | None = None) -> np.ndarray:
    """This rank's part of a global batch (`world`: a train.distributed.World): consecutive rows cut into
    world.size near-equal parts, or, with the rows' request keys (rows grouped by request, as listwise batches are),
    whole requests cut that way."""
    if not world.distributed:
        return rows
    if requests is None:
        return np.array_split(rows, world.size)[world.rank]
    starts = np.flatnonzero(np.r_[True, requests[1:] != requests[:-1]])       # first row of each request
    bounds = np.r_[starts, len(rows)]
    parts = np.array_split(np.arange(len(starts)), world.size)[world.rank]
    return rows[bounds[parts[0]]:bounds[parts[-1] + 1]] if len(parts) else rows[:0]
