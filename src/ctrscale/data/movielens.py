"""MovieLens CTR protocols `ml100k-ctr-v1` and `ml1m-u2999-ctr-v1` (shared/spec/data.md).

Both: label = rating >= 4; events ordered by (timestamp, user_id, item_id) and split by position 80/10/10;
the history of an event = the same user's ratings strictly earlier, ordered by (timestamp, item_id);
a request = the events of one user at one timestamp.
"""
from __future__ import annotations

import gzip
import re
from importlib import resources
from pathlib import Path

import numpy as np

from ..schema import load_schema
from .prepare import request_ids, time_split, write_prepared
from .store import fingerprint, is_prepared

ML1M_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
               "Western"]
VERSION = 1


def schema_path(name: str) -> Path:
    return Path(str(resources.files("ctrscale") / "schemas" / f"{name}.yaml"))


def _zip_prefix(z: str) -> str:
    return z[0] if z[:1].isdigit() else "x"


def _load_ml100k(raw: Path):
    r = np.loadtxt(raw / "u.data", dtype=np.int64)
    users = {}
    for line in (raw / "u.user").read_text(encoding="latin-1").splitlines():
        uid, age, gender, occ, zipc = line.split("|")
        users[int(uid)] = (age, gender, occ, _zip_prefix(zipc))
    items = {}
    for line in (raw / "u.item").read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        flags = [int(x) for x in parts[5:24]]
        genre = flags.index(1) + 1 if 1 in flags else 0
        m = re.search(r"(\d{4})$", parts[2].strip())
        decade = int(m.group(1)) // 10 * 10 if m else 0
        items[int(parts[0])] = (genre, decade)
    return r[:, 0], r[:, 1], r[:, 2], r[:, 3], users, items


def _load_ml1m(raw: Path):
    with gzip.open(raw / "ratings.dat.gz", "rt", encoding="latin-1") as f:
        r = np.array([line.split("::") for line in f.read().splitlines()], dtype=np.int64)
    users = {}
    for line in (raw / "users.dat").read_text(encoding="latin-1").splitlines():
        uid, gender, age, occ, zipc = line.split("::")
        users[int(uid)] = (age, gender, occ, _zip_prefix(zipc))
    items = {}
    for line in (raw / "movies.dat").read_text(encoding="latin-1").splitlines():
        mid, title, genres = line.split("::")
        first = genres.split("|")[0]
        genre = ML1M_GENRES.index(first) + 1 if first in ML1M_GENRES else 0
        m = re.search(r"\((\d{4})\)\s*$", title)
        decade = int(m.group(1)) // 10 * 10 if m else 0
        items[int(mid)] = (genre, decade)
    return r[:, 0], r[:, 1], r[:, 2], r[:, 3], users, items


LOADERS = {"ml100k-ctr-v1": (_load_ml100k, ["u.data", "u.user", "u.item"]),
           "ml1m-u2999-ctr-v1": (_load_ml1m, ["ratings.dat.gz", "users.dat", "movies.dat"])}


def prepare_movielens(name: str, raw_dir: str | Path, out: str | Path, force: bool = False) -> dict | None:
    """Prepare one of the MovieLens protocols; returns the report, or None when `out` is already prepared."""
    raw_dir, out = Path(raw_dir), Path(out)
    load, files = LOADERS[name]
    missing = [f for f in files if not (raw_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{raw_dir}: missing {missing} for {name}")
    schema = load_schema(schema_path(name))
    content_file = raw_dir / schema.content.path
    fp = fingerprint(name, VERSION, schema.to_dict(),
                     files=[raw_dir / f for f in files] + ([content_file] if content_file.exists() else []))
    if not force and is_prepared(out, fp):
        return None
    user, item, rating, ts, users, items = load(raw_dir)
    if (ts <= 0).any():
        bad = int(np.argmax(ts <= 0))
        raise ValueError(f"{raw_dir / files[0]}: row {bad + 1}: field timestamp: non-positive value {ts[bad]}")

    order = np.lexsort((item, user, ts))  # by timestamp, then user, then item
    user, item, rating, ts = user[order], item[order], rating[order], ts[order]
    split = time_split(len(ts))

    # Behavior log: each user's ratings by (timestamp, item); an event's history ends before its timestamp.
    log_order = np.lexsort((item, ts, user))
    lu, lt = user[log_order], ts[log_order]
    key_span = int(ts.max()) + 1
    log_key = lu * key_span + lt
    hist_end = np.searchsorted(log_key, user * key_span + ts, side="left")
    hist_start = np.searchsorted(lu, user, side="left")

    uf = np.array([users[u] for u in user.tolist()], dtype=object)
    itf = np.array([items.get(i, (0, 0)) for i in item.tolist()], dtype=np.int64)
    log_items = np.array([items.get(i, (0, 0)) for i in item[log_order].tolist()], dtype=np.int64)
    rows = {
        "user_id": user, "age": uf[:, 0].astype(str), "gender": uf[:, 1].astype(str),
        "occupation": uf[:, 2].astype(str), "zip_prefix": uf[:, 3].astype(str),
        "item_id": item, "genre": itf[:, 0], "release_decade": itf[:, 1],
        "hour": (ts // 3600) % 24, "weekday": (ts // 86400 + 3) % 7,  # 1970-01-01 was a Thursday; Monday = 0
        "label": (rating >= 4).astype(np.float32), "time": ts, "user": user, "request": request_ids(user, ts),
    }
    log = {"item_id": item[log_order], "genre": log_items[:, 0], "rating": rating[log_order], "time": lt}
    content = np.load(content_file) if content_file.exists() else None
    return write_prepared(out, schema=schema, fp=fp, rows=rows, split=split, log=log, hist_start=hist_start,
                          hist_end=hist_end, content_raw=content)
