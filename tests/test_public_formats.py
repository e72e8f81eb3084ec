"""Preparers of public dataset formats, on small files the tests write in each format."""
from __future__ import annotations

import numpy as np

from ctrscale.data import catalog
from ctrscale.data.dataset import PreparedDataset

TITLES = {1: ('"American President, The (1995)"', "Comedy|Drama|Romance"), 2: ("Heat (1995)", "Action|Crime"),
          3: ("Some Film (2004)", "(no genres listed)"), 4: ("Untitled", "IMAX|Drama")}


def _events(rng, users=25, per_user=12, items=(1, 2, 3, 4, 5)):
    """(user, item, rating in half stars 1..10, timestamp) with repeated timestamps (requests of several items)."""
    rows = []
    for u in range(1, users + 1):
        t = 1_000_000_000 + int(rng.integers(0, 10_000_000))
        for _ in range(per_user):
            t += int(rng.choice([0, 3600, 86_400]))
            rows.append((u, int(rng.choice(items)), int(rng.integers(1, 11)), t))
    return rows


def _check_protocol(data: PreparedDataset, events, threshold_half_stars: int) -> None:
    """Against an independent reading of the events: split sizes, labels in time order, and every history equal
    to the user's strictly earlier events."""
    ev = sorted(events, key=lambda e: (e[3], e[0], e[1]))
    n = len(ev)
    sizes = [len(data.split(s)) for s in ("train", "valid", "test")]
    assert sizes == [n * 80 // 100, n * 10 // 100, n - n * 80 // 100 - n * 10 // 100]
    labels = np.concatenate([data.split(s).column("label") for s in ("train", "valid", "test")])
    np.testing.assert_array_equal(labels, [float(r >= threshold_half_stars) for _, _, r, _ in ev])
    item_vocab = data.vocab("item_id")
    offset = 0
    for s, size in zip(("train", "valid", "test"), sizes):
        got = data.gather(s, np.arange(size), max_len=64)
        for i in range(size):
            u, _, _, t = ev[offset + i]
            earlier = sorted((e[3], e[1]) for e in events if e[0] == u and e[3] < t)
            mask = got["hist_time"][i] > 0
            assert list(got["hist_time"][i][mask]) == [e[0] for e in earlier]
            assert list(item_vocab.values[got["hist"][i][mask][:, 0] - 2]) == [e[1] for e in earlier]
        offset += size


def test_movielens_20m_format(tmp_path):
    rng = np.random.default_rng(0)
    events = _events(rng)
    raw = tmp_path / "ml-20m"
    raw.mkdir()
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r / 2:.1f},{t}\n" for u, i, r, t in events))
    (raw / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{i},{title},{genres}\n" for i, (title, genres) in TITLES.items()))        # movie 5 is not listed
    path, report = catalog.prepare("ml20m-ctr-v1", raw_dir=str(raw))
    data = PreparedDataset(path)
    assert data.spec.sparse == ("user_id", "item_id", "genre", "release_decade", "hour", "weekday")
    assert data.spec.hist == ("item_id", "genre", "rating")
    _check_protocol(data, events, threshold_half_stars=8)
    # genre = first listed genre in ML-20M's order (+1), decade from "(YYYY)" at the title's end, 0 when absent
    genre, decade, item = (data.vocab(v) for v in ("genre", "release_decade", "item_id"))
    rows = data.split("train").column("sparse")
    for movie, (g, d) in {1: (5, 1990), 2: (1, 1990), 3: (0, 2000), 4: (12, 0), 5: (0, 0)}.items():
        mine = rows[item.values[rows[:, 1] - 2] == movie]
        if len(mine):
            assert set(genre.values[mine[:, 2] - 2]) == {g} and set(decade.values[mine[:, 3] - 2]) == {d}
    assert catalog.prepare("ml20m-ctr-v1", raw_dir=str(raw))[1] is None                # prepared: a no-op


def test_movielens_1m_format(tmp_path):
    rng = np.random.default_rng(1)
    events = [(u, i, (r + 1) // 2, t) for u, i, r, t in _events(rng, users=20)]    # whole stars 1..5
    raw = tmp_path / "ml-1m"
    raw.mkdir()
    (raw / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in events), encoding="latin-1")
    (raw / "users.dat").write_text("".join(f"{u}::{'MF'[u % 2]}::{18 + u % 3}::{u % 7}::{10000 + u}\n"
                                           for u in range(1, 21)), encoding="latin-1")
    (raw / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action\n"
                                    "3::Se7en (1995)::Crime|Thriller\n4::Other (2000)::Drama\n5::Fifth (1999)::War\n",
                                    encoding="latin-1")
    path, _ = catalog.prepare("ml1m-ctr-v1", raw_dir=str(raw))
    data = PreparedDataset(path)
    assert data.spec.sparse[:5] == ("user_id", "age", "gender", "occupation", "zip_prefix")
    _check_protocol(data, events, threshold_half_stars=4)
