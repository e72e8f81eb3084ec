"""Streaming batches: exact coverage, bounded rows held, determinism, resume, and a streaming training run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ctrscale.cli import main
from ctrscale.data.loader import LoaderConfig
from ctrscale.data.stream import StreamLoader
from ctrscale.data.loader import shard
from ctrscale.train.distributed import World


def _stream(data, seed=0, buffer=300, chunk=128, batch=64):
    return StreamLoader(data, "train", LoaderConfig(batch_size=batch, max_len=5), seed, buffer, chunk)


def test_an_epoch_covers_every_row_once_holding_a_bounded_number(tiny):
    s = _stream(tiny, buffer=100, chunk=64, batch=32)
    batches = list(s.plan(0))
    rows = np.concatenate(batches)
    assert len(batches) == s.steps_per_epoch() and sorted(rows) == list(range(s.n))
    assert s.max_rows_held <= 100 + 64 + 32 and s.n > 20 * s.max_rows_held
    assert all(len(b) == 32 for b in batches[:-1])
    # shuffled beyond a chunk: rows of one batch come from several chunks
    assert np.mean([len(np.unique(b // 64)) for b in batches]) > 2


def test_order_depends_on_seed_and_epoch_only(tiny):
    a, b = list(_stream(tiny).plan(1)), list(_stream(tiny).plan(1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(list(_stream(tiny).plan(2))))
    assert not np.array_equal(np.concatenate(a), np.concatenate(list(_stream(tiny, seed=5).plan(1))))


def test_resume_and_ranks_see_their_parts_of_the_same_stream(tiny):
    s = _stream(tiny)
    full = list(s.epoch(0))
    tail = list(s.epoch(0, start_step=7))
    assert len(tail) == len(full) - 7
    for x, y in zip(full[7:], tail):
        np.testing.assert_array_equal(x.label.numpy(), y.label.numpy())
        np.testing.assert_array_equal(x.sparse.numpy(), y.sparse.numpy())
    plan = list(s.plan(0))
    for r in range(2):
        mine = list(s.epoch(0, world=World(r, 2)))
        assert [len(b) for b in mine] == [len(shard(rows, World(r, 2))) for rows in plan]


def test_listwise_streaming_is_refused(tiny):
    with pytest.raises(ValueError, match="pointwise"):
        StreamLoader(tiny, "train", LoaderConfig(listwise=True))


def test_a_streaming_run_stopped_and_resumed_equals_the_uninterrupted_one(tmp_path):
    common = ["model.name=din", "data.name=synthetic", "data.options={impressions: 20000}", "data.max_len=20",
              "data.streaming=true", "data.shuffle_buffer=2000", "data.chunk_rows=1000", "train.epochs=2",
              "train.patience=2", "train.progress=false", "train.threads=2", "train.checkpoint_every=5",
              f"out_dir={tmp_path}"]
    assert main(["train", "name=whole", *common]) == 0
    assert main(["train", "name=cut", *common, "train.max_steps=12"]) == 0
    assert main(["train", "--resume", "name=cut", *common]) == 0
    whole, cut = (json.loads((tmp_path / k / "results.json").read_text()) for k in ("whole", "cut"))
    assert whole["test"] == cut["test"] and whole["test"]["auc"] > 0.55
