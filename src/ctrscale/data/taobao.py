"""The Taobao display-ad logs (Tianchi dataset 56) as `taobao-ctr-v1` (schema: schemas/taobao-ctr-v1.yaml).

Raw files (CSV with headers, as published):
- raw_sample.csv    user, time_stamp, adgroup_id, pid, nonclk, clk      (one row per ad impression)
- ad_feature.csv    adgroup_id, cate_id, campaign_id, customer, brand, price
- user_profile.csv  userid, cms_segid, cms_group_id, final_gender_code, age_level, pvalue_level, shopping_level,
                    occupation, new_user_class_level   (the published header ends that name with a space)
- behavior_log.csv  user, time_stamp, btag (pv | cart | fav | buy), cate, brand

Protocol: label = clk; impressions ordered by (time, user, adgroup); days in Beijing time (UTC+8): the last day
of raw_sample is test, the one before valid, the rest train; hour and weekday in Beijing time; a request = one
user at one second; history = the user's behaviors strictly before the impression, by time. Missing values (a
user absent from user_profile, empty levels, NULL brands) become the category -1. price enters as log(1 + price)
(0 when the ad is unknown), then standardised as every numeric field. The behavior log is read in
blocks and only the users of raw_sample are kept (`log_days` > 0 also drops behaviors older than that many days
before the first impression, to bound memory on the full 700M-row log).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv

from ..errors import DataError
from ..schema import load_schema
from .movielens import schema_path
from .prepare import join_by_key, request_ids, write_prepared
from .store import fingerprint, is_prepared

FILES = ("raw_sample.csv", "ad_feature.csv", "user_profile.csv", "behavior_log.csv")
BTAGS = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}
PROFILE = ("cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level", "shopping_level",
           "occupation", "new_user_class_level")
AD = ("cate_id", "campaign_id", "customer", "brand")
BEIJING = 8 * 3600
VERSION = 1


def _table(path: Path):
    t = csv.read_csv(path)
    return t.rename_columns([c.strip() for c in t.column_names])


def _ints(table, name: str, path: Path) -> np.ndarray:
    """A column as int64, missing values as -1; a non-integer value is an error naming file, row and field."""
    col = table[name]
    if not (pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        values = col.to_pylist()
        bad = next(i for i, v in enumerate(values) if v is not None and not str(v).lstrip("-").isdigit())
        raise DataError(f"{path}: row {bad + 2}: field {name}: not an integer: {values[bad]!r}")
    return pc.fill_null(col.cast("int64"), -1).to_numpy()


def _behaviors(path: Path, users: np.ndarray, since: int) -> dict[str, np.ndarray]:
    """The behavior log, read block by block, keeping the given users' behaviors at or after `since`."""
    parts = {k: [] for k in ("user", "time", "btag", "cate", "brand")}
    reader = csv.open_csv(path, convert_options=csv.ConvertOptions(column_types={"btag": "string"}))
    row0 = 0
    for block in reader:
        block = block.rename_columns([c.strip() for c in block.schema.names])
        user = block.column("user").to_numpy(zero_copy_only=False).astype(np.int64)
        time = block.column("time_stamp").to_numpy(zero_copy_only=False).astype(np.int64)
        tags = np.array(block.column("btag").to_pylist(), dtype=object)
        code = np.array([BTAGS.get(t, 0) for t in tags], dtype=np.int8)
        if (code == 0).any():
            bad = int(np.argmax(code == 0))
            raise DataError(f"{path}: row {row0 + bad + 2}: field btag: {tags[bad]!r} is not one of {list(BTAGS)}")
        keep = np.isin(user, users) & (time >= since)
        for k, v in (("user", user), ("time", time), ("btag", code)):
            parts[k].append(v[keep])
        for k in ("cate", "brand"):
            parts[k].append(pc.fill_null(block.column(k).cast("int64"), -1).to_numpy()[keep])
        row0 += block.num_rows
    return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}


def prepare_taobao(raw_dir: str | Path, out: str | Path, force: bool = False, log_days: int = 0) -> dict | None:
    raw_dir, out = Path(raw_dir), Path(out)
    missing = [f for f in FILES if not (raw_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{raw_dir}: missing {missing} for taobao-ctr-v1")
    schema = load_schema(schema_path("taobao-ctr-v1"))
    fp = fingerprint("taobao-ctr-v1", VERSION, schema.to_dict(), log_days, files=[raw_dir / f for f in FILES])
    if not force and is_prepared(out, fp):
        return None
    sample_path = raw_dir / "raw_sample.csv"
    sample = _table(sample_path)
    user, ts, ad = (_ints(sample, c, sample_path) for c in ("user", "time_stamp", "adgroup_id"))
    clk = _ints(sample, "clk", sample_path)
    if not np.isin(clk, (0, 1)).all():
        bad = int(np.argmax(~np.isin(clk, (0, 1))))
        raise DataError(f"{sample_path}: row {bad + 2}: field clk: {clk[bad]} is not 0 or 1")
    if (ts <= 0).any():
        bad = int(np.argmax(ts <= 0))
        raise DataError(f"{sample_path}: row {bad + 2}: field time_stamp: non-positive value {ts[bad]}")
    pid = np.array(sample["pid"].to_pylist(), dtype=object).astype(str)
    order = np.lexsort((ad, user, ts))
    user, ts, ad, clk, pid = user[order], ts[order], ad[order], clk[order], pid[order]

    day = (ts + BEIJING) // 86400
    days = np.unique(day)
    split = np.where(day == days[-1], 2, np.where(day == days[-2], 1, 0)) if len(days) >= 3 else None
    if split is None:
        raise DataError(f"{sample_path}: needs impressions on at least 3 days (train, valid = the day before "
                         f"the last, test = the last day); found {len(days)}")

    ads_path = raw_dir / "ad_feature.csv"
    ads = _table(ads_path)
    ad_keys = _ints(ads, "adgroup_id", ads_path)
    rows = {"user_id": user, "adgroup_id": ad, "pid": pid, "hour": ((ts + BEIJING) // 3600) % 24,
            "weekday": (day + 3) % 7,  # 1970-01-01 was a Thursday; Monday = 0
            "label": clk.astype(np.float32), "time": ts, "user": user, "request": request_ids(user, ts)}
    for c in AD:
        rows[c] = join_by_key(ad_keys, _ints(ads, c, ads_path), ad)
    price = pc.fill_null(ads["price"].cast("float64"), 0.0).to_numpy()
    rows["price"] = np.log1p(join_by_key(ad_keys, price, ad, missing=0.0))  # log price (heavy tail); unknown: 0
    prof_path = raw_dir / "user_profile.csv"
    prof = _table(prof_path)
    prof_keys = _ints(prof, "userid", prof_path)
    for c in PROFILE:
        rows[c] = join_by_key(prof_keys, _ints(prof, c, prof_path), user)

    since = int(ts.min()) - log_days * 86400 if log_days > 0 else 0
    log = _behaviors(raw_dir / "behavior_log.csv", np.unique(user), since)
    log_order = np.lexsort((log["time"], log["user"]))
    log = {k: v[log_order] for k, v in log.items()}
    span = int(max(ts.max(), log["time"].max(initial=0))) + 1
    log_key = log["user"] * span + log["time"]
    hist_start = np.searchsorted(log["user"], user, side="left")
    hist_end = np.searchsorted(log_key, user * span + ts, side="left")     # strictly earlier behaviors
    return write_prepared(out, schema=schema, fp=fp, rows=rows, split=split,
                          log={"cate": log["cate"], "brand": log["brand"], "btag": log["btag"].astype(np.int64),
                               "time": log["time"]},
                          hist_start=hist_start, hist_end=hist_end, extra={"log_days": log_days})

