"""Preparers of public dataset formats, on small files the tests write in each format."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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


def test_taobao_display_ads_format(tmp_path):
    """Four files as Tianchi publishes them (the profile header's trailing space, NULL brands, a user without a
    profile, behaviors after impressions and of users never shown an ad)."""
    rng = np.random.default_rng(2)
    day0 = 1494000000 - (1494000000 + 8 * 3600) % 86400           # a Beijing midnight
    ads = {a: (a % 7 + 1, a * 10, a * 100, (a * 31) % 5 if a % 4 else None, 10.0 * a) for a in range(1, 13)}
    samples = []
    for u in range(1, 31):
        for _ in range(6):
            t = day0 + int(rng.integers(0, 5)) * 86400 + int(rng.integers(0, 86400))
            samples.append((u, t, int(rng.integers(1, 13)), f"430548_{1007 + u % 2}", int(rng.random() < 0.3)))
    behaviors = [(u, day0 - 3 * 86400 + int(rng.integers(0, 8 * 86400)), str(rng.choice(["pv", "cart", "fav", "buy"])),
                  int(rng.integers(1, 8)), int(rng.integers(0, 5))) for u in range(1, 36) for _ in range(15)]
    raw = tmp_path / "taobao"
    raw.mkdir()
    (raw / "raw_sample.csv").write_text("user,time_stamp,adgroup_id,pid,nonclk,clk\n" + "".join(
        f"{u},{t},{a},{p},{1 - c},{c}\n" for u, t, a, p, c in samples))
    (raw / "ad_feature.csv").write_text("adgroup_id,cate_id,campaign_id,customer,brand,price\n" + "".join(
        f"{a},{c},{cp},{cu},{'NULL' if b is None else b},{p}\n" for a, (c, cp, cu, b, p) in ads.items()))
    (raw / "user_profile.csv").write_text(
        "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,occupation,"
        "new_user_class_level \n" + "".join(f"{u},0,{u % 13},{1 + u % 2},{u % 7},{'' if u % 5 == 0 else 1 + u % 3},"
                                            f"3,0,{1 + u % 4}\n" for u in range(2, 31)))   # user 1: no profile
    (raw / "behavior_log.csv").write_text("user,time_stamp,btag,cate,brand\n" + "".join(
        f"{u},{t},{b},{c},{br}\n" for u, t, b, c, br in behaviors))
    path, _ = catalog.prepare("taobao-ctr-v1", raw_dir=str(raw))
    data = PreparedDataset(path)
    assert data.spec.hist == ("cate", "brand", "btag") and "price" in data.spec.dense
    ordered = sorted(samples, key=lambda s: (s[1], s[0], s[2]))
    days = [(t + 8 * 3600) // 86400 for _, t, _, _, _ in ordered]
    last = max(days)
    want = {"train": [s for s, d in zip(ordered, days) if d < last - 1],
            "valid": [s for s, d in zip(ordered, days) if d == last - 1],
            "test": [s for s, d in zip(ordered, days) if d == last]}
    vocab = {f: data.vocab(f) for f in ("user_id", "adgroup_id", "brand", "pvalue_level", "cate_id")}
    decode = lambda f, ids: vocab[f].values[ids - 2]  # noqa: E731  (ids >= 2: values seen in train)
    btag_vocab = data.vocab("hist.btag")
    for split, rows in want.items():
        sp = data.split(split)
        assert len(sp) == len(rows)
        np.testing.assert_array_equal(sp.column("label"), [c for *_, c in rows])
        got = data.gather(split, np.arange(len(rows)), max_len=200)
        f = {name: j for j, name in enumerate(data.spec.sparse)}
        for i, (u, t, a, _, _) in enumerate(rows):
            ids = got["sparse"][i]
            if ids[f["adgroup_id"]] >= 2:                                  # the joined ad features
                assert decode("adgroup_id", ids[f["adgroup_id"]]) == a
                c, _, _, b, _ = ads[a]
                assert decode("cate_id", ids[f["cate_id"]]) == c
                assert ids[f["brand"]] == 1 or decode("brand", ids[f["brand"]]) == (-1 if b is None else b)
            if ids[f["user_id"]] >= 2 and decode("user_id", ids[f["user_id"]]) == 1 and ids[f["pvalue_level"]] >= 2:
                assert decode("pvalue_level", ids[f["pvalue_level"]]) == -1       # no profile: -1
            earlier = sorted((bt, b) for bu, bt, b, _, _ in behaviors if bu == u and bt < t)
            mask = got["hist_time"][i] > 0
            assert list(got["hist_time"][i][mask]) == [e[0] for e in earlier]
            tags = btag_vocab.values[got["hist"][i][mask][:, 2] - 2]
            assert sorted(tags.tolist()) == sorted({"pv": 1, "cart": 2, "fav": 3, "buy": 4}[b] for _, b in earlier)


def test_taobao_bad_click_names_file_row_and_field(tmp_path):
    raw = tmp_path / "taobao"
    raw.mkdir()
    (raw / "raw_sample.csv").write_text("user,time_stamp,adgroup_id,pid,nonclk,clk\n1,1494000000,1,p,1,0\n"
                                        "2,1494000001,1,p,0,2\n")
    headers = {"ad_feature.csv": "adgroup_id,cate_id,campaign_id,customer,brand,price",
               "user_profile.csv": "userid,cms_segid", "behavior_log.csv": "user,time_stamp,btag,cate,brand"}
    for f, header in headers.items():
        (raw / f).write_text(header + "\n")
    with pytest.raises(ValueError, match=r"raw_sample.csv: row 3: field clk: 2 is not 0 or 1"):
        catalog.prepare("taobao-ctr-v1", raw_dir=str(raw))


def test_amazon_reviews_format(tmp_path):
    """The 2014 release: gzipped JSON reviews and metadata written as Python literals (single quotes)."""
    import gzip
    rng = np.random.default_rng(3)
    asins = [f"B00{i:05d}" for i in range(15)]
    reviews = [(f"A{u}X", str(rng.choice(asins)), int(rng.integers(1, 6)), 1_300_000_000 + 86400 * int(d))
               for u in range(20) for d in sorted(rng.integers(0, 400, 8))]
    raw = tmp_path / "amazon"
    raw.mkdir()
    with gzip.open(raw / "reviews_Toys_5.json.gz", "wt") as f:
        for u, a, r, t in reviews:
            f.write(json.dumps({"reviewerID": u, "asin": a, "reviewerName": "x", "helpful": [0, 0],
                                "reviewText": "ok", "overall": float(r), "summary": "s", "unixReviewTime": t,
                                "reviewTime": "01 1, 2011"}) + "\n")
    with gzip.open(raw / "meta_Toys.json.gz", "wt") as f:
        for i, a in enumerate(asins[:-1]):                                  # the last item has no metadata
            brand = f", 'brand': 'Brand{i % 3}'" if i % 4 else ""
            f.write(f"{{'asin': '{a}', 'categories': [['Toys', 'Sub{i % 5}']], 'price': {i + 0.5}{brand}}}\n")
    path, _ = catalog.prepare("amazon-ctr-v1", raw_dir=str(raw))
    data = PreparedDataset(path)
    splits = ("train", "valid", "test")
    label = np.concatenate([data.split(s).column("label") for s in splits])
    assert len(label) == 2 * len(reviews) and label.sum() == len(reviews)
    item, cat = data.vocab("item_id"), data.vocab("category")
    f = {name: j for j, name in enumerate(data.spec.sparse)}
    for s in splits:
        n = len(data.split(s))
        got = data.gather(s, np.arange(n), max_len=64)
        for i in range(n):
            ids = got["sparse"][i]
            u = data.vocab("user_id").values[ids[f["user_id"]] - 2] if ids[f["user_id"]] >= 2 else None
            t = int(data.split(s).column("time")[i])
            if u is None:
                continue
            earlier = sorted((rt, a) for ru, a, _, rt in reviews if ru == u and rt < t)
            mask = got["hist_time"][i] > 0
            assert list(got["hist_time"][i][mask]) == [e[0] for e in earlier]   # only reviews, never negatives
            assert list(item.values[got["hist"][i][mask][:, 0] - 2]) == [e[1] for e in earlier]
    # each request (a user on a day, across splits) holds that day's reviews and as many negatives
    req = np.concatenate([data.split(s).column("request") for s in splits])
    per_request = np.bincount(req, minlength=req.max() + 1)
    positives = np.bincount(req, weights=label, minlength=req.max() + 1)
    assert np.array_equal(per_request[per_request > 0], 2 * positives[per_request > 0])
    items_all = np.concatenate([data.split(s).column("sparse")[:, f["item_id"]] for s in splits])
    pairs = np.flatnonzero(per_request == 2)                          # one review and its negative
    for r in pairs[:100]:
        a, b = items_all[req == r]
        assert a != b
    # metadata: category = last level of the first path ("" without metadata)
    sub = {a: f"Sub{i % 5}" for i, a in enumerate(asins[:-1])}
    rows = data.split("train").column("sparse")
    for r in rows[:80]:
        if r[f["item_id"]] >= 2 and r[f["category"]] >= 2:
            assert cat.values[r[f["category"]] - 2] == sub.get(item.values[r[f["item_id"]] - 2], "")


def _eleme_row(rng, u, t_field, hours, items, history):
    """One row of the 39 Ele.me columns; history = [(item, shop, category, brand, time_type, gap seconds)]
    written newest first (the preparer orders by time whatever the written order)."""
    item = int(rng.choice(items))
    lists = {k: ";".join(str(h[j]) for h in history) for j, k in enumerate(
        ("item_id_list", "shop_id_list", "category_1_id_list", "brand_id_list", "time_type_list", "timediff_list"))}
    n = len(history)
    filler = ";".join(["x"] * n)
    return [int(rng.random() < 0.3), f"u{u}", u % 3, "c1", f"{10.5 + u:.1f}", u % 2, "0.1", "3", "", f"s{item % 4}",
            f"i{item}", "c1", "d2", "-1", "g6", "g12", f"b{item % 3}", f"k{item % 5}", "f1", "5", "", "7",
            lists["shop_id_list"], lists["item_id_list"], lists["category_1_id_list"], filler,
            lists["brand_id_list"], ";".join(["9.5"] * n), filler, filler, lists["timediff_list"], filler,
            lists["time_type_list"], filler, t_field, hours, "lunch", 3, "gh"]


def test_eleme_format(tmp_path):
    """Headerless CSV files with inline ';'-separated histories; `times` as unix seconds in one file and as a day
    YYYYMMDD (+ hours) in a gzipped other; empty histories; lists written newest first."""
    import csv
    import gzip
    rng = np.random.default_rng(4)
    day0 = 1_600_041_600                                                   # 2020-09-14 00:00 UTC
    raw = tmp_path / "eleme"
    raw.mkdir()
    expected = []                                                          # (time, user, item, label, history)
    for name, as_day in (("D1_0.csv", False), ("D2_0.csv.gz", True)):
        rows = []
        for u in range(12):
            for d in range(2) if not as_day else range(2, 4):
                hour = int(rng.integers(0, 24))
                t = day0 + d * 86400 + hour * 3600
                history = [(f"i{int(rng.integers(0, 9))}", f"s{k % 4}", f"k{k % 5}", f"b{k % 3}",
                            str(rng.choice(["tea", "dinner"])), int(rng.integers(60, 10**6)))
                           for k in range(int(rng.integers(0, 6)))]
                history.sort(key=lambda h: h[5])                           # newest (smallest gap) first
                times = f"{20200914 + d}" if as_day else str(t)
                row = _eleme_row(rng, u, times, hour, range(9), history)
                rows.append(row)
                expected.append((t, f"u{u}", row[10], row[0], sorted((t - h[5], h[0]) for h in history)))
        opener = gzip.open if as_day else open
        with opener(raw / name, "wt", newline="") as f:
            csv.writer(f).writerows(rows)
    path, _ = catalog.prepare("eleme-ctr-v1", raw_dir=str(raw))
    data = PreparedDataset(path)
    assert data.spec.hist == ("item_id", "shop_id", "category_1_id", "brand_id", "time_type")
    assert "rank_30" in data.spec.dense and "geohash12" in data.spec.sparse
    expected.sort(key=lambda e: (e[0], e[1], e[2]))
    days = [(e[0] - day0) // 86400 for e in expected]
    item = data.vocab("item_id")
    for s, want_days in (("train", (0, 1)), ("valid", (2,)), ("test", (3,))):
        rows = [e for e, d in zip(expected, days) if d in want_days]
        sp = data.split(s)
        assert len(sp) == len(rows)
        np.testing.assert_array_equal(sp.column("label"), [e[3] for e in rows])
        np.testing.assert_array_equal(sp.column("time"), [e[0] for e in rows])
        got = data.gather(s, np.arange(len(rows)), max_len=16)
        for i, (_, _, _, _, history) in enumerate(rows):
            mask = got["hist_time"][i] > 0
            assert list(got["hist_time"][i][mask]) == [h[0] for h in history]
            ids = got["hist"][i][mask][:, 0]
            assert [item.values[j - 2] if j >= 2 else None for j in ids] == \
                [h[1] if h[1] in set(item.values) else None for h in history]


def test_eleme_unequal_history_lists_name_file_row_and_field(tmp_path):
    import csv
    rng = np.random.default_rng(5)
    raw = tmp_path / "eleme"
    raw.mkdir()
    rows = [_eleme_row(rng, u, str(1_600_041_600 + 86400 * u), 1, range(3), [("i1", "s1", "k1", "b1", "tea", 60)])
            for u in range(3)]
    rows[1][24] = "k1;k2"                                                  # category_1_id_list: 2 values, not 1
    with open(raw / "D1_0.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ValueError, match=r"D1_0.csv: row 2: field category_1_id_list: 2 values where item_id_list"):
        catalog.prepare("eleme-ctr-v1", raw_dir=str(raw))


def test_raw_data_not_found_names_each_folder_once_and_the_flag(tmp_path, monkeypatch, capsys):
    from ctrscale.cli import main
    monkeypatch.setitem(catalog.RAW_FOLDERS, "amazon-ctr-v1", "amazon-missing")
    monkeypatch.setenv("CTRSCALE_DATA", str(tmp_path))
    monkeypatch.chdir(Path(catalog.__file__).resolve().parents[3])  # a checkout: ../shared/data is also beside it
    assert main(["data", "prepare", "amazon-ctr-v1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    shared = (Path.cwd().parent / "shared" / "data" / "amazon-missing").resolve()  # ../shared may be a symlink
    assert err.count(str(shared)) == 1 and err.count(str(tmp_path.resolve() / "amazon-missing")) == 1, err
    assert err.count("\n") == 1 and "Give --raw-dir (data.raw_dir in a run config)" in err
    # a --raw-dir that is not a folder is refused, never replaced by another copy of the data
    assert main(["data", "prepare", "amazon-ctr-v1", "--raw-dir", str(tmp_path / "typo"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--raw-dir (data.raw_dir in a run config) {tmp_path / 'typo'} is not a " \
                                   f"folder" in err
