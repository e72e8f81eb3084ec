"""Schema validation, the columnar store, vocabularies, the loader and the request view."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrscale.batch import RequestBatch
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.data.store import OOV, ColumnWriter, Vocab, read_columns
from ctrscale.schema import SchemaError, load_schema, schema_from_dict

GOOD = {"name": "t", "label": "y", "user_key": "u", "time": "ts",
        "fields": [{"name": "u", "role": "user"}, {"name": "i", "role": "item"},
                   {"name": "price", "kind": "numeric", "role": "item"}],
        "sequences": [{"name": "h", "time": "h_ts", "fields": [{"name": "i", "vocab": "i"}, {"name": "act"}]}]}


def test_schema_loads_and_rejects_mistakes(tmp_path):
    s = schema_from_dict(GOOD)
    assert [f.name for f in s.categorical] == ["u", "i"] and [f.name for f in s.numeric] == ["price"]
    bad_cases = [
        ({**GOOD, "lable": "y"}, "unknown key"),
        ({k: v for k, v in GOOD.items() if k != "label"}, "missing key"),
        ({**GOOD, "fields": [{"name": "u", "kind": "text"}]}, "kind must be"),
        ({**GOOD, "fields": [{"name": "u", "role": "advertiser"}]}, "role must be"),
        ({**GOOD, "fields": GOOD["fields"] * 2}, "duplicate"),
        ({**GOOD, "sequences": [{"name": "h", "time": "t", "fields": [{"name": "i", "vocab": "nope"}]}]}, "vocab"),
    ]
    for raw, msg in bad_cases:
        with pytest.raises(SchemaError, match=msg):
            schema_from_dict(raw)
    p = tmp_path / "s.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(SchemaError, match=str(p.name)):
        load_schema(p)
    s.dump(tmp_path / "round.yaml")
    assert load_schema(tmp_path / "round.yaml") == s


def test_vocab_frequency_order_min_freq_and_oov():
    v = Vocab.fit(np.array(["b", "a", "b", "c", "b", "a"]), min_freq=2)
    assert len(v) == 4  # pad, oov, b, a
    np.testing.assert_array_equal(v.encode(np.array(["b", "a", "c", "zzz"])), [2, 3, OOV, OOV])
    again = Vocab.from_json(v.to_json())
    np.testing.assert_array_equal(again.encode(np.array(["a", "b"])), [3, 2])
    ints = Vocab.fit(np.array([10, 10, 7]))
    np.testing.assert_array_equal(ints.encode(np.array([7, 10, 8])), [3, 2, OOV])


def test_column_writer_round_trip(tmp_path):
    w = ColumnWriter(tmp_path / "c")
    a, b = np.arange(12, dtype=np.int32).reshape(6, 2), np.linspace(0, 1, 6)
    w.append(x=a[:4], y=b[:4])
    w.append(x=a[4:], y=b[4:])
    with pytest.raises(ValueError, match="column x"):
        w.append(x=np.zeros((1, 3), np.int32))
    w.close()
    cols = read_columns(tmp_path / "c")
    np.testing.assert_array_equal(cols["x"], a)
    np.testing.assert_array_equal(cols["y"], b)


def test_epoch_covers_every_row_once_and_is_reproducible(tiny):
    cfg = LoaderConfig(batch_size=500, max_len=10)
    a, b = Loader(tiny, "train", cfg, seed=7), Loader(tiny, "train", cfg, seed=7)
    plan = a.plan(0)
    np.testing.assert_array_equal(np.sort(np.concatenate(plan)), np.arange(len(tiny.split("train"))))
    for x, y in zip(plan, b.plan(0)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.concatenate(plan), np.concatenate(a.plan(1)))  # a new order each epoch
    assert not np.array_equal(np.concatenate(plan), np.concatenate(Loader(tiny, "train", cfg, seed=8).plan(0)))


def test_resume_mid_epoch_and_workers_give_the_same_batches(tiny):
    cfg = LoaderConfig(batch_size=700, max_len=12)
    full = list(Loader(tiny, "train", cfg, seed=1).epoch(2))
    tail = list(Loader(tiny, "train", cfg, seed=1).epoch(2, start_step=3))
    par = list(Loader(tiny, "train", LoaderConfig(batch_size=700, max_len=12, num_workers=2), seed=1).epoch(2))
    assert len(tail) == len(full) - 3 and len(par) == len(full)
    for x, y in zip(full[3:], tail):
        assert torch.equal(x.sparse, y.sparse) and torch.equal(x.hist, y.hist)
    for x, y in zip(full, par):
        assert torch.equal(x.sparse, y.sparse) and torch.equal(x.hist_time, y.hist_time)


def test_trimmed_batches_drop_only_padding(tiny):
    plain = list(Loader(tiny, "train", LoaderConfig(batch_size=16, max_len=600, trim=False), seed=2).epoch(0))
    cut = list(Loader(tiny, "train", LoaderConfig(batch_size=16, max_len=600), seed=2).epoch(0))
    widths = {b.hist.shape[1] for b in cut}
    assert all(w == 600 or w % 8 == 0 for w in widths) and min(widths) < 300
    for x, y in zip(plain, cut):
        w = y.hist.shape[1]
        assert torch.equal(x.hist[:, -w:], y.hist) and torch.equal(x.hist_time[:, -w:], y.hist_time)
        assert not x.hist_mask[:, :-w].any()  # what was cut was padding only
        assert y.hist_mask.sum(1).max() > w - 8 or w == 8


def test_length_window_groups_similar_histories(tiny):
    cfg = LoaderConfig(batch_size=100, max_len=40, length_window=10)
    loader = Loader(tiny, "train", cfg, seed=3)
    plan = loader.plan(0)
    np.testing.assert_array_equal(np.sort(np.concatenate(plan)), np.arange(loader.n))
    for x, y in zip(plan, Loader(tiny, "train", cfg, seed=3).plan(0)):
        np.testing.assert_array_equal(x, y)
    lengths = tiny.history_lengths("train", 40)
    spread = lambda batches: np.mean([np.ptp(lengths[b]) for b in batches])  # noqa: E731
    random_plan = Loader(tiny, "train", LoaderConfig(batch_size=100, max_len=40), seed=3).plan(0)
    assert spread(plan) < 0.5 * spread(random_plan)
    assert not np.array_equal(np.concatenate(plan), np.concatenate(loader.plan(1)))


def test_token_budget_splits_long_history_batches(tiny):
    """Evaluation batches: at most max_tokens rows x trimmed width (a single row may exceed it), every row once,
    and the batch the loader yields is exactly that wide."""
    cfg = LoaderConfig(batch_size=200, max_len=40, length_window=4, shuffle=False, max_tokens=1600)
    loader = Loader(tiny, "valid", cfg)
    plan = loader.plan(0)
    np.testing.assert_array_equal(np.sort(np.concatenate(plan)), np.arange(loader.n))
    whole = Loader(tiny, "valid", LoaderConfig(batch_size=200, max_len=40, length_window=4, shuffle=False)).plan(0)
    assert len(plan) > len(whole)
    for rows, batch in zip(plan, loader.epoch(0)):
        assert len(rows) == 1 or len(rows) * batch.hist.shape[1] <= 1600
        assert len(rows) <= 200


def test_token_budget_for_whole_requests(tiny):
    cfg = LoaderConfig(batch_size=200, max_len=40, length_window=4, shuffle=False, max_tokens=800, listwise=True)
    loader = Loader(tiny, "valid", cfg)
    plan = loader.plan(0)
    np.testing.assert_array_equal(np.sort(np.concatenate(plan)), np.arange(loader.n))
    for rows, rb in zip(plan, loader.epoch(0)):
        requests, width = rb.mask.shape[0], rb.context.hist.shape[1]
        assert requests == 1 or requests * width <= 800
        assert len(np.unique(tiny.split("valid").column("request")[rows])) == requests  # whole requests


def test_histories_right_aligned_strictly_earlier(tiny):
    b = next(iter(Loader(tiny, "test", LoaderConfig(batch_size=256, max_len=30, shuffle=False))))
    m = b.hist_mask
    # right-aligned: once a row has a real behavior, every later slot is real
    assert (m.int().diff(dim=1) >= 0).all()
    assert ((b.hist != 0).any(-1) <= m).all()                         # padding carries id 0
    assert (b.hist_time[m] < b.time.unsqueeze(1).expand_as(m)[m]).all()  # strictly earlier
    t = b.hist_time.masked_fill(~m, 0)
    assert (t.diff(dim=1)[m[:, 1:] & m[:, :-1]] >= 0).all()           # oldest first


def test_request_view_holds_whole_requests(tiny):
    loader = Loader(tiny, "valid", LoaderConfig(batch_size=200, max_len=8, listwise=True), seed=0)
    req = tiny.split("valid").column("request")
    sizes = dict(zip(*np.unique(req, return_counts=True)))
    seen = 0
    for rb in loader:
        assert isinstance(rb, RequestBatch)
        counts = rb.mask.sum(1)
        keys = rb.context.request.tolist()
        assert [sizes[k] for k in keys] == counts.tolist()
        assert len(set(keys)) == len(keys)
        flat = rb.flat()
        assert (flat.request.unsqueeze(1) == rb.context.request).any(1).all()
        seen += int(counts.sum())
    assert seen == len(req)


def test_request_batch_round_trip(tiny):
    b = next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=300, max_len=5), seed=2)))
    rb = RequestBatch.from_batch(b)
    flat = rb.flat()
    key = lambda x: sorted(zip(x.request.tolist(), x.sparse.tolist(), x.label.tolist()))  # noqa: E731
    assert key(flat) == key(b)


def test_preparation_never_overwrites_an_unrelated_folder(tmp_path):
    from ctrscale.data.store import DatasetWriter, Layout
    from ctrscale.errors import DataError
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    lay = Layout(sparse=[], dense=[], hist=[], field_vocab={}, roles={})
    with pytest.raises(DataError, match="refusing"):
        DatasetWriter(keep, lay)
    assert (keep / "notes.txt").read_text() == "precious"
    DatasetWriter(tmp_path / "fresh", lay)
    DatasetWriter(tmp_path / "fresh", lay)  # a half-written earlier attempt is replaced
