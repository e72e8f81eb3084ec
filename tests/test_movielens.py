"""The canonical real-data protocols reproduce the figures of shared/spec/data.md exactly."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import raw_dir

from ctrscale.data.dataset import PreparedDataset
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.data.movielens import prepare_movielens

EXPECTED = {
    "ml100k-ctr-v1": ("ml-100k", {"train": (80_000, 44_072, 38.49, 98.47), "valid": (10_000, 5_674, 36.06, 84.24),
                                  "test": (10_000, 5_629, 40.56, 122.87)}),
    "ml1m-u2999-ctr-v1": ("ml-1m-u2999", {"train": (390_120, 224_767, 41.14, 166.69),
                                          "valid": (48_765, 27_926, 44.08, 210.76),
                                          "test": (48_765, 26_431, 48.93, 373.76)}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_figures(name, tmp_path):
    folder, expected = EXPECTED[name]
    report = prepare_movielens(name, raw_dir(folder), tmp_path / name)
    for split, (rows, pos, mean50, mean1024) in expected.items():
        r = report["splits"][split]
        assert (r["rows"], r["positives"]) == (rows, pos)
        assert round(r["mean_history_len"]["50"], 2) == mean50
        assert round(r["mean_history_len"]["1024"], 2) == mean1024
    # the loader sees the same histories the report counted
    data = PreparedDataset(tmp_path / name)
    b = next(iter(Loader(data, "test", LoaderConfig(batch_size=len(data.split("test")), max_len=50,
                                                     shuffle=False))))
    assert round(b.hist_mask.sum(1).float().mean().item(), 2) == expected["test"][2]
    assert prepare_movielens(name, raw_dir(folder), tmp_path / name) is None  # second run: a no-op


def test_ml100k_fields_and_content(ml100k):
    spec = ml100k.spec
    assert spec.sparse == ("user_id", "age", "gender", "occupation", "zip_prefix", "item_id", "genre",
                           "release_decade", "hour", "weekday")
    assert spec.hist == ("item_id", "genre", "rating") and spec.hist_to_sparse == [5, 6, -1]
    content = ml100k.content()
    assert content.shape == (spec.vocab_sizes["item_id"], 384)
    assert np.allclose(np.linalg.norm(content[2:], axis=1), 1, atol=1e-4) and not content[:2].any()
    # content row of an encoded item equals the raw table's row of its movie id
    raw = np.load(raw_dir("ml-100k") / "item_content_minilm384.npy")
    items = ml100k.vocab("item_id")
    for i in (2, 50, len(items) - 1):
        np.testing.assert_array_equal(content[i], raw[int(items.values[i - 2])])


def test_ml100k_time_order_and_requests(ml100k):
    t = [ml100k.split(s).column("time") for s in ("train", "valid", "test")]
    assert t[0].max() <= t[1].min() and t[1].max() <= t[2].min()
    req, user, time = (ml100k.split("train").column(c) for c in ("request", "user", "time"))
    pairs = np.unique(np.stack([user, time], 1), axis=0)
    assert len(np.unique(req)) == len(pairs)
