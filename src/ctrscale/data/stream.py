"""Streaming training batches with bounded memory, for training sets far larger than RAM.

The in-memory `Loader` permutes all n rows of a split (8 bytes a row) and gathers each batch anywhere in the
split. `StreamLoader` instead walks the split's shards in a seeded order, each shard in chunks of `chunk_rows`
consecutive rows (chunk order seeded too), and mixes them through a shuffle buffer: each chunk joins the
buffer, the buffer is permuted, and all but `buffer` rows leave it in that order. Rows leave in batches of
`batch_size` (global batches: with a distributed world each rank takes its part, as `Loader` does). At any time
it holds at most `buffer + chunk_rows + batch_size` row indices, and the features of one batch; reads stay
within a window of recent chunks of the memory-mapped shards, so the page cache works instead of random access
over the whole split.

The order is a function of (seed, epoch) only, whatever the world size; resuming at step k replays the index
stream (no features are read for the skipped batches). Pointwise only: listwise models need whole requests.
"""
from __future__ import annotations

import numpy as np

from .dataset import PreparedDataset
from ..errors import ConfigError
from .loader import LoaderConfig, _Gather, shard


class StreamLoader:
    def __init__(self, data: PreparedDataset, split: str, cfg: LoaderConfig, seed: int = 0,
                 buffer: int = 100_000, chunk_rows: int = 65_536):
        if cfg.listwise:
            raise ConfigError("streaming batches are pointwise: set data.streaming=false for listwise training")
        if cfg.fraction < 1 or cfg.length_window or cfg.max_tokens:
            raise ConfigError("data.streaming=true supports neither data.train_fraction < 1 nor "
                              "data.length_window: set data.streaming=false for them")
        if buffer < 0 or chunk_rows < 1:
            raise ConfigError(f"buffer must be >= 0 and chunk_rows >= 1, got {buffer}, {chunk_rows}")
        self.data, self.split, self.cfg, self.seed = data, split, cfg, seed
        self.buffer, self.chunk_rows = buffer, chunk_rows
        self.offsets = data.split(split).offsets                       # shard s holds rows offsets[s]:offsets[s+1]
        self.n = int(self.offsets[-1])
        self.max_rows_held = 0                                          # the bound a test checks

    def steps_per_epoch(self) -> int:
        return -(-self.n // self.cfg.batch_size)

    def _chunks(self, rng: np.random.Generator):
        for s in rng.permutation(len(self.offsets) - 1):
            lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
            starts = np.arange(lo, hi, self.chunk_rows)
            for c in rng.permutation(len(starts)):
                yield np.arange(starts[c], min(starts[c] + self.chunk_rows, hi))

    def plan(self, epoch: int):
        """The epoch's global batches (row-index arrays), lazily."""
        rng = np.random.default_rng([self.seed, epoch])
        held = np.zeros(0, np.int64)     # rows in the buffer
        out = np.zeros(0, np.int64)      # rows that left the buffer, not yet batched
        bs = self.cfg.batch_size
        for chunk in self._chunks(rng):
            held = np.concatenate([held, chunk])
            self.max_rows_held = max(self.max_rows_held, len(held) + len(out))
            held = held[rng.permutation(len(held))]
            leave = max(0, len(held) - self.buffer)
            out, held = np.concatenate([out, held[:leave]]), held[leave:]
            while len(out) >= bs:
                yield out[:bs]
                out = out[bs:]
        rest = np.concatenate([out, held[rng.permutation(len(held))]])
        for i in range(0, len(rest), bs):
            yield rest[i:i + bs]

    def epoch(self, epoch: int = 0, start_step: int = 0, world=None):
        for step, rows in enumerate(self.plan(epoch)):
            if step < start_step:
                continue
            if world is not None and world.distributed:
                rows = shard(rows, world)
            yield _Gather(self.data, self.split, self.cfg.max_len, [rows], False, self.cfg.trim,
                          self.cfg.cand_seq)[0]
