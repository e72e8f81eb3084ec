"""Amazon product reviews (McAuley et al.; the 5-core review files and their metadata) as `amazon-ctr-v1`.

Raw files, one category per folder: `reviews_<Category>_5.json[.gz]` (a JSON object per line: reviewerID, asin,
overall, unixReviewTime, ...) and `meta_<Category>.json[.gz]` (an object per line: asin, categories (lists of
paths) or category (one path), brand, price; the 2014 release writes Python literals, the 2018 one JSON: both
are read).

Protocol (as DIN built its Amazon benchmark): every review is a clicked impression (label 1) of its item by its
reviewer at its time (unixReviewTime: day precision); each is paired with `negatives` impressions (label 0) of
items drawn uniformly from all reviewed items other than the positive one (seeded), same user and time. A request
= one user at one time. Impressions ordered by (time, user, item) and split by position 80/10/10. History = the
user's reviews strictly before (negatives never enter a history), with their ratings. Item features: category =
the last level of the first category path, brand ("" when missing), price as log(1 + price) (0 when missing).
"""
from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..schema import load_schema
from .movielens import schema_path
from .prepare import request_ids, time_split, write_prepared
from .store import fingerprint, is_prepared

VERSION = 1


def _one(raw: Path, pattern: str) -> Path:
    found = sorted(raw.glob(pattern + ".json.gz")) + sorted(raw.glob(pattern + ".json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{raw}: expected one {pattern}.json[.gz] file, found {[f.name for f in found]}")
    return found[0]


def _lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def _record(path: Path, n: int, line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(line)       # the 2014 metadata: Python dict literals
        except (ValueError, SyntaxError) as e:
            raise DataError(f"{path}: row {n}: not a JSON object or Python literal ({e})") from e


def _price(v) -> float:
    try:
        return float(str(v).replace("$", "").replace(",", "")) if v not in (None, "") else 0.0
    except ValueError:
        return 0.0


def prepare_amazon(raw_dir: str | Path, out: str | Path, force: bool = False, negatives: int = 1,
                   seed: int = 0) -> dict | None:
    raw_dir, out = Path(raw_dir), Path(out)
    reviews_path, meta_path = _one(raw_dir, "reviews_*_5"), _one(raw_dir, "meta_*")
    schema = load_schema(schema_path("amazon-ctr-v1"))
    fp = fingerprint("amazon-ctr-v1", VERSION, schema.to_dict(), negatives, seed, files=[reviews_path, meta_path])
    if not force and is_prepared(out, fp):
        return None
    users, items, ratings, times = [], [], [], []
    for n, line in _lines(reviews_path):
        r = _record(reviews_path, n, line)
        for field in ("reviewerID", "asin", "overall", "unixReviewTime"):
            if field not in r:
                raise DataError(f"{reviews_path}: row {n}: field {field}: missing")
        users.append(r["reviewerID"])
        items.append(r["asin"])
        ratings.append(int(round(float(r["overall"]))))
        times.append(int(r["unixReviewTime"]))
    users, items = np.array(users), np.array(items)
    ratings, times = np.array(ratings, np.int64), np.array(times, np.int64)
    if (times <= 0).any():
        bad = int(np.argmax(times <= 0))
        raise DataError(f"{reviews_path}: row {bad + 1}: field unixReviewTime: non-positive value {times[bad]}")

    meta = {}
    for n, line in _lines(meta_path):
        m = _record(meta_path, n, line)
        paths = m.get("categories") or ([m["category"]] if m.get("category") else [])
        leaf = paths[0][-1] if paths and paths[0] else ""
        meta[m.get("asin")] = (leaf, str(m.get("brand") or ""), np.log1p(_price(m.get("price"))))

    # negatives: uniform over the reviewed items, never the positive item itself
    catalog_items = np.unique(items)
    rng = np.random.default_rng(seed)
    neg_items = []
    for _ in range(negatives):
        draw = rng.integers(0, len(catalog_items) - 1, len(items))
        pos_idx = np.searchsorted(catalog_items, items)
        neg_items.append(catalog_items[draw + (draw >= pos_idx)])              # skip the positive's slot
    all_items = np.concatenate([items, *neg_items])
    all_users = np.tile(users, negatives + 1)
    all_times = np.tile(times, negatives + 1)
    label = np.concatenate([np.ones(len(items)), np.zeros(len(items) * negatives)]).astype(np.float32)
    order = np.lexsort((all_items, all_users, all_times))
    all_items, all_users, all_times, label = all_items[order], all_users[order], all_times[order], label[order]

    # behavior log: each user's reviews by (time, item); a history ends before the impression's time
    user_codes, user_of = np.unique(all_users, return_inverse=True)
    rev_user = np.searchsorted(user_codes, users)
    log_order = np.lexsort((items, times, rev_user))
    lu, lt = rev_user[log_order], times[log_order]
    span = int(all_times.max()) + 1
    hist_end = np.searchsorted(lu * span + lt, user_of * span + all_times, side="left")
    hist_start = np.searchsorted(lu, user_of, side="left")
    feats = [meta.get(i, ("", "", 0.0)) for i in all_items.tolist()]
    log_feats = [meta.get(i, ("", "", 0.0)) for i in items[log_order].tolist()]
    rows = {"user_id": all_users, "item_id": all_items, "category": np.array([f[0] for f in feats]),
            "brand": np.array([f[1] for f in feats]), "price": np.array([f[2] for f in feats]),
            "weekday": (all_times // 86400 + 3) % 7, "label": label, "time": all_times, "user": user_of,
            "request": request_ids(user_of, all_times)}
    log = {"item_id": items[log_order], "category": np.array([f[0] for f in log_feats]),
           "rating": ratings[log_order], "time": lt}
    return write_prepared(out, schema=schema, fp=fp, rows=rows, split=time_split(len(label)), log=log,
                          hist_start=hist_start, hist_end=hist_end, extra={"negatives": negatives, "seed": seed})
