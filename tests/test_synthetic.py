"""The embedded default dataset `synthetic-v1`: layout, determinism, train-only vocabularies, planted structure."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import ctrscale.data.synthetic  # noqa: F401
except ImportError:  # package not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ctrscale.data import synthetic as syn  # noqa: E402
from ctrscale.data.dataset import PreparedDataset  # noqa: E402
from ctrscale.data.store import SPLITS, read_columns  # noqa: E402

SMALL = dict(n_users=2000, n_items=2000, impressions=30_000)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "a"
    report = syn.prepare_synthetic(root, seed=0, **SMALL)
    return root, report


@pytest.fixture(scope="module")
def data(prepared):
    return PreparedDataset(prepared[0])


@pytest.fixture(scope="module")
def raw_rows():
    """The raw (unencoded) rows of the same preparation, per split, in stored order."""
    world = syn.World(SMALL["n_users"], SMALL["n_items"], SMALL["impressions"], 0, 32)
    chunks = [world.chunk(c) for c in range(world.n_chunks)]
    out = {}
    for s in range(3):
        out[SPLITS[s]] = {k: np.concatenate([ch["rows"][k][ch["rows"]["split"] == s] for ch in chunks])
                          for k in ("user_id", "item_id", "category", "time")}
    return world, chunks, out


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("report.md",)}


def test_layout_and_split_sizes(prepared, data):
    root, rep = prepared
    meta = json.loads((root / "meta.json").read_text())
    assert meta["name"] == "synthetic-v1" and meta["max_len"] == 100
    assert data.spec.sparse == ("user_id", "age", "gender", "region", "item_id", "category", "brand", "hour",
                                "weekday")
    assert data.spec.dense == ("price",)
    assert data.spec.hist == ("item_id", "category", "action")
    assert data.spec.field_vocab["hist.item_id"] == "item_id"
    assert data.spec.field_vocab["hist.category"] == "category"
    assert data.spec.field_vocab["hist.action"] == "hist.action"
    assert data.vocab("hist.action").values.tolist() in (["click", "purchase"], ["purchase", "click"])
    rows = {s: rep["splits"][s]["rows"] for s in SPLITS}
    total = sum(rows.values())
    assert abs(total - SMALL["impressions"]) < 0.05 * SMALL["impressions"]
    assert 0.74 < rows["train"] / total < 0.86
    assert 0.06 < rows["valid"] / total < 0.14 and 0.06 < rows["test"] / total < 0.14
    pos = sum(rep["splits"][s]["positives"] for s in SPLITS) / total
    assert 0.1 < pos < 0.35
    for s in SPLITS:
        assert len(data.split(s)) == rows[s]
    # The price is standardised with train statistics.
    dense = data.split("train").column("dense")
    assert abs(dense.mean()) < 1e-3 and abs(dense.std() - 1) < 1e-3


def test_split_is_by_time(data):
    t = {s: data.split(s).column("time") for s in SPLITS}
    assert t["train"].max() < syn.T80 <= t["valid"].min()
    assert t["valid"].max() < syn.T90 <= t["test"].min()
    assert t["train"].min() >= syn.T_IMP0 and t["test"].max() < syn.T_END


def test_requests_share_user_time_and_history(data):
    cols = {k: np.concatenate([data.split(s).column(k) for s in SPLITS])
            for k in ("request", "user", "time", "hist_start", "hist_end")}
    req = cols["request"]
    order = np.argsort(req, kind="stable")
    r = req[order]
    same = r[1:] == r[:-1]
    assert same.any()
    for k in ("user", "time", "hist_start", "hist_end"):
        v = cols[k][order]
        assert (v[1:][same] == v[:-1][same]).all(), k
    # One request per (user, time), and 3..10 impressions each.
    first = np.r_[True, ~same]
    pairs = np.stack([cols["user"][order][first], cols["time"][order][first]], 1)
    assert len(np.unique(pairs, axis=0)) == first.sum()
    sizes = np.bincount(r - r.min())
    sizes = sizes[sizes > 0]
    assert sizes.min() >= 1 and sizes.max() <= 10 and sizes.mean() > 5


def test_times_positive_log_ordered_histories_strictly_before(data, raw_rows):
    _, chunks, _ = raw_rows
    log_time = np.asarray(data.log_time)
    assert len(log_time) and (log_time > 0).all()
    log_user = np.concatenate([ch["log"]["user"] for ch in chunks])
    assert (np.diff(log_user) >= 0).all()
    same_user = np.diff(log_user) == 0
    assert (np.diff(log_time)[same_user] > 0).all()  # ordered per user by time
    for s in SPLITS:
        sp = data.split(s)
        user, t = sp.column("user"), sp.column("time")
        hs, he = sp.column("hist_start"), sp.column("hist_end")
        assert (hs <= he).all() and (he <= len(log_time)).all()
        assert (log_user[hs[he > hs]] == user[he > hs]).all() and (log_user[he[he > hs] - 1] == user[he > hs]).all()
        ne = he > hs
        assert (log_time[he[ne] - 1] < t[ne]).all()  # the most recent behavior is strictly earlier
        # Maximal: the next log entry is the user's next behavior at or after the request, or another user's.
        nxt = he < len(log_time)
        assert ((log_user[he[nxt]] != user[nxt]) | (log_time[he[nxt]] >= t[nxt])).all()
        # The range starts at the user's first behavior.
        assert ((hs == 0) | (log_user[np.maximum(hs - 1, 0)] != user)).all()
    # gather: right-aligned, padding time 0, everything before the impression time.
    g = data.gather("test", np.arange(min(500, len(data.split("test")))), 100)
    valid = g["hist_time"] > 0
    assert (g["hist_time"] < g["time"][:, None]).all()
    assert (np.diff(valid.astype(int), axis=1) >= 0).all()  # padding on the left only


def test_sessions_separated_by_long_gaps(data):
    gaps = np.diff(np.asarray(data.log_time))
    gaps = gaps[gaps > 0]
    within, between = gaps <= 600, gaps >= 3 * 3600
    assert (within | between).mean() > 0.999  # nothing in between: time chunking finds sessions
    assert 0.05 < between.mean() < 0.4
    assert np.median(gaps[between]) > 12 * 3600


def test_content_unit_norm_and_indexed_by_vocab(data, raw_rows):
    world = raw_rows[0]
    content = data.content()
    vocab = data.vocab("item_id")
    assert content.shape == (len(vocab), 32)
    assert (content[:2] == 0).all()
    assert np.allclose(np.linalg.norm(content[2:], axis=1), 1, atol=1e-5)
    assert np.array_equal(content[2:], world.content_raw[vocab.values.astype(np.int64)])


def test_vocabularies_fit_on_train_only(data, raw_rows):
    _, _, raw = raw_rows
    for field in ("item_id", "user_id", "category"):
        col = data.spec.sparse.index(field)
        vocab = data.vocab(field)
        train_values = set(raw["train"][field].tolist())
        assert set(vocab.values.tolist()) == train_values
        for s in SPLITS:
            ids = data.split(s).column("sparse")[:, col]
            assert np.array_equal(ids, vocab.encode(raw[s][field]))  # rows stored in generation order
            unseen = ~np.isin(raw[s][field], list(train_values))
            assert np.array_equal(ids == 1, unseen)
            if s == "train":
                assert not unseen.any()
    # Items and users first seen after the train period exist and are OOV (cold start).
    item_col = data.spec.sparse.index("item_id")
    user_col = data.spec.sparse.index("user_id")
    assert (data.split("test").column("sparse")[:, item_col] == 1).any()
    assert (data.split("test").column("sparse")[:, user_col] == 1).any()


def test_rerun_is_noop_and_determinism(prepared, tmp_path):
    root, _ = prepared
    before = (root / "meta.json").stat().st_mtime_ns
    assert syn.prepare_synthetic(root, seed=0, **SMALL) is None
    assert (root / "meta.json").stat().st_mtime_ns == before
    again = tmp_path / "b"
    assert syn.prepare_synthetic(again, seed=0, **SMALL) is not None
    assert _all_files(root) == _all_files(again)
    other = tmp_path / "c"
    syn.prepare_synthetic(other, seed=1, **SMALL)
    a, c = read_columns(root / "train" / "shard-00000"), read_columns(other / "train" / "shard-00000")
    assert not (len(a["label"]) == len(c["label"]) and np.array_equal(a["sparse"], c["sparse"]))


def test_small_shards_split_the_same_rows(prepared, tmp_path):
    root, _ = prepared
    small = tmp_path / "s"
    syn.prepare_synthetic(small, seed=0, shard_rows=5000, **SMALL)
    a, b = PreparedDataset(root), PreparedDataset(small)
    assert len(b.meta["splits"]["train"]) > 1
    for s in SPLITS:
        for k in ("sparse", "dense", "label", "hist_end", "request"):
            assert np.array_equal(a.split(s).column(k), b.split(s).column(k))


def test_planted_sequence_signal(data):
    """Clicks concentrate on candidates whose category matches one of the user's last 5 behaviors, and on
    candidates whose content is close to the most recent behavior: the sequence carries signal."""
    cat_col = data.spec.sparse.index("category")
    item_col = data.spec.sparse.index("item_id")
    content = data.content()
    for split in ("train", "test"):
        g = data.gather(split, np.arange(len(data.split(split))), 100)
        y, cat = g["label"], g["sparse"][:, cat_col]
        recent = g["hist"][:, -5:, 1]
        match = ((recent == cat[:, None]) & (recent > 1)).any(1)
        assert 0.2 < match.mean() < 0.8
        ctr_match, ctr_other = y[match].mean(), y[~match].mean()
        assert ctr_match > 2.5 * ctr_other, (split, ctr_match, ctr_other)
        cos = (content[g["sparse"][:, item_col]] * content[g["hist"][:, -1, 0]]).sum(1)
        assert cos[y == 1].mean() > cos[y == 0].mean() + 0.1


def _prepare_in_child(out: str) -> None:
    from ctrscale.data import catalog
    catalog.prepare("synthetic", out=out, impressions=3000, n_users=200, n_items=100)


def test_processes_preparing_one_folder_at_once_take_turns(tmp_path):
    """A parallel sweep's first points open the same unprepared dataset together: one prepares, the others wait
    and find it prepared (without the lock they removed each other's half-written folders)."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    out = tmp_path / "shared-synthetic"
    procs = [ctx.Process(target=_prepare_in_child, args=(str(out),)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(PreparedDataset(out).split("train")) > 0
