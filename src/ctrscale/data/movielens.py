"""MovieLens CTR protocols (shared/spec/data.md): `ml100k-ctr-v1`, `ml1m-u2999-ctr-v1` (the shared subset),
`ml1m-ctr-v1` (all of MovieLens-1M) and `ml20m-ctr-v1` (MovieLens-20M, no user features).

All: label = rating >= 4; events ordered by (timestamp, user_id, item_id) and split by position 80/10/10;
the history of an event = the same user's ratings strictly earlier, ordered by (timestamp, item_id);
a request = the events of one user at one timestamp.
"""
from __future__ import annotations

import gzip
import re
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..schema import load_schema
from .prepare import join_by_key, request_ids, time_split, write_prepared
from .store import (TIME_RANGE, check_inputs_outside, check_output, fingerprint, is_prepared,
                    outside_time_range)

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


ML20M_GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
                "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _genre_decade(title: str, genres: str, order: list[str]) -> tuple[int, int]:
    """The first listed genre's index in `order` (+1; 0 = none or unknown) and the decade of "(YYYY)" at the
    title's end (0 when absent)."""
    first = genres.split("|")[0]
    m = re.search(r"\((\d{4})\)\s*$", title)
    return (order.index(first) + 1 if first in order else 0), (int(m.group(1)) // 10 * 10 if m else 0)


def _load_ml1m(raw: Path):
    gz = raw / "ratings.dat.gz"  # the shared u2999 subset is gzipped; the public ml-1m folder is not
    opened = gzip.open(gz, "rt", encoding="latin-1") if gz.exists() else open(raw / "ratings.dat", encoding="latin-1")
    with opened as f:
        r = np.array([line.split("::") for line in f.read().splitlines()], dtype=np.int64)
    users = {}
    for line in (raw / "users.dat").read_text(encoding="latin-1").splitlines():
        uid, gender, age, occ, zipc = line.split("::")
        users[int(uid)] = (age, gender, occ, _zip_prefix(zipc))
    items = {}
    for line in (raw / "movies.dat").read_text(encoding="latin-1").splitlines():
        mid, title, genres = line.split("::")
        items[int(mid)] = _genre_decade(title, genres, ML1M_GENRES)
    return r[:, 0], r[:, 1], r[:, 2], r[:, 3], users, items


def _load_ml20m(raw: Path):
    """ratings.csv (userId,movieId,rating,timestamp; half stars) and movies.csv (movieId,title,genres; titles
    quoted when they hold commas), read with pyarrow's CSV reader (20M rows in seconds)."""
    from pyarrow import csv
    r = csv.read_csv(raw / "ratings.csv")
    m = csv.read_csv(raw / "movies.csv", convert_options=csv.ConvertOptions(
        column_types={"title": "string", "genres": "string"}))
    items = {int(i): _genre_decade(t, g, ML20M_GENRES) for i, t, g in
             zip(m["movieId"].to_pylist(), m["title"].to_pylist(), m["genres"].to_pylist())}
    half_stars = np.rint(r["rating"].to_numpy() * 2).astype(np.int64)
    return (r["userId"].to_numpy().astype(np.int64), r["movieId"].to_numpy().astype(np.int64), half_stars,
            r["timestamp"].to_numpy().astype(np.int64), {}, items)


# name -> (loader, files that must exist (any one of a tuple), label threshold on the loader's rating)
LOADERS = {"ml100k-ctr-v1": (_load_ml100k, ["u.data", "u.user", "u.item"], 4),
           "ml1m-u2999-ctr-v1": (_load_ml1m, ["ratings.dat.gz", "users.dat", "movies.dat"], 4),
           "ml1m-ctr-v1": (_load_ml1m, [("ratings.dat", "ratings.dat.gz"), "users.dat", "movies.dat"], 4),
           "ml20m-ctr-v1": (_load_ml20m, ["ratings.csv", "movies.csv"], 8)}  # 8 half stars = 4 stars


def prepare_movielens(name: str, raw_dir: str | Path, out: str | Path, force: bool = False) -> dict | None:
    """Prepare one of the MovieLens protocols; returns the report, or None when `out` is already prepared."""
    raw_dir, out = Path(raw_dir), Path(out)
    load, files, threshold = LOADERS[name]
    present = [next((raw_dir / f for f in ((f,) if isinstance(f, str) else f) if (raw_dir / f).exists()), None)
               for f in files]
    missing = [f if isinstance(f, str) else " or ".join(f) for f, p in zip(files, present) if p is None]
    if missing:
        raise FileNotFoundError(f"{raw_dir}: missing {missing} for {name}")
    check_inputs_outside(out, [raw_dir])  # replacing `out` would delete the raw files
    schema = load_schema(schema_path(name))
    content_file = raw_dir / schema.content.path if schema.content is not None else None
    has_content = content_file is not None and content_file.exists()
    fp = fingerprint(name, VERSION, schema.to_dict(), files=present + ([content_file] if has_content else []))
    if not force and is_prepared(out, fp):
        return None
    check_output(out)
    user, item, rating, ts, users, items = load(raw_dir)
    far = outside_time_range(ts)
    if far.any():
        bad = int(np.argmax(far))
        raise DataError(f"{present[0]}: row {bad + 1}: field timestamp: {ts[bad]} is not a unix time in seconds "
                        f"within {TIME_RANGE}; the file is not in the {name} format")

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

    itf = _item_table(items, item)
    log_items = _item_table(items, item[log_order])
    rows = {
        "user_id": user, "item_id": item, "genre": itf[:, 0], "release_decade": itf[:, 1],
        "hour": (ts // 3600) % 24, "weekday": (ts // 86400 + 3) % 7,  # 1970-01-01 was a Thursday; Monday = 0
        "label": (rating >= threshold).astype(np.float32), "time": ts, "user": user,
        "request": request_ids(user, ts),
    }
    if users:  # ML-100K and ML-1M describe their users; ML-20M does not
        uf = np.array([users[u] for u in user.tolist()], dtype=object)
        rows.update(age=uf[:, 0].astype(str), gender=uf[:, 1].astype(str), occupation=uf[:, 2].astype(str),
                    zip_prefix=uf[:, 3].astype(str))
    log = {"item_id": item[log_order], "genre": log_items[:, 0], "rating": rating[log_order], "time": lt}
    content = np.load(content_file) if has_content else None
    return write_prepared(out, schema=schema, fp=fp, rows=rows, split=split, log=log, hist_start=hist_start,
                          hist_end=hist_end, content_raw=content)



def _item_table(items: dict, ids: np.ndarray) -> np.ndarray:
    """(N, 2) genre and decade of each item id (0, 0 for an item the movie file does not list)."""
    keys = np.array(sorted(items), dtype=np.int64)
    table = np.array([items[k] for k in keys.tolist()], dtype=np.int64).reshape(-1, 2)
    return join_by_key(keys, table, ids, missing=0)
