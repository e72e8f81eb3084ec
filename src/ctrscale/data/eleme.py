"""The Ele.me food-delivery click logs (Tianchi dataset 131047) as `eleme-ctr-v1` (schema: schemas/eleme-ctr-v1.yaml).

Raw files: every `*.csv` / `*.csv.gz` in the folder (published as D<day>_<part>.csv), comma-separated, no header,
39 columns in this order (the order public pipelines of this dataset read; names below are ctrscale's):

    label, user_id, gender, visit_city, avg_price, is_super_vip, ctr_30, ord_30, total_amt_30,          (user)
    shop_id, item_id, city_id, district_id, shop_aoi_id, shop_geohash_6, shop_geohash_12, brand_id,
    category_1_id, merge_standard_food_id, rank_7, rank_30, rank_90,                                     (item)
    shop_id_list, item_id_list, category_1_id_list, merge_standard_food_id_list, brand_id_list, price_list,
    shop_aoi_id_list, shop_geohash_6_list, timediff_list, hours_list, time_type_list, weekdays_list,     (history)
    times, hours, time_type, weekdays, geohash12                                                       (request)

Each row carries its own behavior history as ';'-separated lists of equal length. Choices where the published
description is silent (stated here because they shape every figure on this data):
- `times` is the request's time: unix seconds, unix milliseconds (13 digits) or a day YYYYMMDD (8 digits; then
  `hours` gives the hour). Days are UTC; the last day is test, the day before valid, the rest train.
- timediff_list = how long before the request each behavior happened, in units of `timediff_seconds` seconds
  (option, default 1); a behavior's time = request time - gap (at least 1 s after the epoch). A history is
  ordered oldest first by that time whatever order the list was written in.
- History tokens: item, shop, category, brand (sharing the candidate's vocabularies) and time_type; price_list,
  the geohash, AOI and food lists are not used. Identifiers are strings; '' and -1 are ordinary categories.
  Numerics ('' = 0) are standardised as every numeric field.
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
from .prepare import request_ids, write_prepared
from .store import fingerprint, is_prepared

USER = ("label", "user_id", "gender", "visit_city", "avg_price", "is_super_vip", "ctr_30", "ord_30", "total_amt_30")
ITEM = ("shop_id", "item_id", "city_id", "district_id", "shop_aoi_id", "shop_geohash_6", "shop_geohash_12",
        "brand_id", "category_1_id", "merge_standard_food_id", "rank_7", "rank_30", "rank_90")
LISTS = ("shop_id_list", "item_id_list", "category_1_id_list", "merge_standard_food_id_list", "brand_id_list",
         "price_list", "shop_aoi_id_list", "shop_geohash_6_list", "timediff_list", "hours_list", "time_type_list",
         "weekdays_list")
REQUEST = ("times", "hours", "time_type", "weekdays", "geohash12")
COLUMNS = USER + ITEM + LISTS + REQUEST
NUMERIC = ("avg_price", "ctr_30", "ord_30", "total_amt_30", "rank_7", "rank_30", "rank_90")
HISTORY = {"item_id": "item_id_list", "shop_id": "shop_id_list", "category_1_id": "category_1_id_list",
           "brand_id": "brand_id_list", "time_type": "time_type_list"}
VERSION = 1


def _files(raw: Path) -> list[Path]:
    files = sorted(raw.glob("*.csv")) + sorted(raw.glob("*.csv.gz"))
    if not files:
        raise FileNotFoundError(f"{raw}: no *.csv or *.csv.gz files for eleme-ctr-v1")
    return files


def _read(path: Path) -> pa.Table:
    try:
        return csv.read_csv(path, read_options=csv.ReadOptions(column_names=list(COLUMNS)),
                            convert_options=csv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS},
                                                               strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not {len(COLUMNS)} comma-separated columns: {e}") from e


def _floats(values: np.ndarray, path: Path, field: str, empty=0, lengths: np.ndarray | None = None) -> np.ndarray:
    """Strings as numbers ('' = `empty`); anything else is an error naming file, row and field (`lengths`: the
    values are flattened lists, `lengths` per row)."""
    values = np.asarray(values).astype(str)
    out = np.full(len(values), empty, np.float64)
    filled = values != ""
    try:
        out[filled] = values[filled].astype(np.float64)
    except ValueError:
        for i in np.flatnonzero(filled):
            try:
                float(values[i])
            except ValueError:
                row = i if lengths is None else int(np.searchsorted(np.cumsum(lengths), i, side="right"))
                raise DataError(f"{path}: row {row + 1}: field {field}: not a number: {values[i]!r}") from None
    return out


def _numbers(table: pa.Table, name: str, path: Path, empty=0) -> np.ndarray:
    return _floats(table[name].to_numpy(zero_copy_only=False), path, name, empty)


def _request_times(times: np.ndarray, hours: np.ndarray, path: Path) -> np.ndarray:
    """unix seconds from `times` (seconds, milliseconds or YYYYMMDD plus `hours`)."""
    out = np.empty(len(times), np.int64)
    day = (times >= 19000101) & (times <= 29991231)
    ms, s = times >= 1e12, (times >= 1e8) & ~day & (times < 1e12)
    if day.any():
        d = times[day].astype(np.int64)
        month = (d // 10000 - 1970) * 12 + d // 100 % 100 - 1
        dates = month.astype("datetime64[M]").astype("datetime64[D]") + (d % 100 - 1)
        out[day] = dates.astype(np.int64) * 86400 + np.clip(hours[day], 0, 23).astype(np.int64) * 3600
    out[ms], out[s] = times[ms] // 1000, times[s]
    bad = ~(day | ms | s)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: row {i + 1}: field times: {times[i]!r} is neither unix seconds, unix "
                         f"milliseconds nor a day YYYYMMDD")
    return out


def _lists(table: pa.Table, path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-row lengths and the flattened values of the history lists used; lengths must agree in a row."""
    lengths, flat = None, {}
    for name in (*HISTORY.values(), "timediff_list"):
        parts = pc.split_pattern(table[name], ";").combine_chunks()
        n = pc.list_value_length(parts).to_numpy(zero_copy_only=False).astype(np.int64)
        n[table[name].to_numpy(zero_copy_only=False) == ""] = 0          # '' is an empty history, not one ''
        values = parts.flatten().to_numpy(zero_copy_only=False)
        keep = np.repeat(n > 0, pc.list_value_length(parts).to_numpy(zero_copy_only=False))
        flat[name] = values[keep]
        if lengths is None:
            lengths = n
        elif (n != lengths).any():
            i = int(np.argmax(n != lengths))
            raise DataError(f"{path}: row {i + 1}: field {name}: {n[i]} values where {HISTORY['item_id']} has "
                             f"{lengths[i]} (the history lists of a row must have equal lengths)")
    return lengths, flat


def prepare_eleme(raw_dir: str | Path, out: str | Path, force: bool = False, timediff_seconds: int = 1) -> dict | None:
    raw_dir, out = Path(raw_dir), Path(out)
    files = _files(raw_dir)
    schema = load_schema(schema_path("eleme-ctr-v1"))
    fp = fingerprint("eleme-ctr-v1", VERSION, schema.to_dict(), timediff_seconds, files=files)
    if not force and is_prepared(out, fp):
        return None
    cols = {c: [] for c in (*COLUMNS, "time", "n_hist", *(f"hist.{h}" for h in HISTORY), "hist.gap")}
    for path in files:
        t = _read(path)
        label = _numbers(t, "label", path)
        if not np.isin(label, (0, 1)).all():
            i = int(np.argmax(~np.isin(label, (0, 1))))
            raise DataError(f"{path}: row {i + 1}: field label: {label[i]} is not 0 or 1")
        hours = _numbers(t, "hours", path)
        cols["label"].append(label)
        cols["time"].append(_request_times(_numbers(t, "times", path, empty=-1), hours, path))
        for c in NUMERIC:
            cols[c].append(_numbers(t, c, path))
        for c in schema.categorical:
            cols[c.name].append(t[c.name].to_numpy(zero_copy_only=False).astype(str))
        n, flat = _lists(t, path)
        cols["n_hist"].append(n)
        for h, src in HISTORY.items():
            cols[f"hist.{h}"].append(flat[src].astype(str))
        cols["hist.gap"].append(_floats(flat["timediff_list"], path, "timediff_list", lengths=n))
    v = {k: np.concatenate(parts) if parts else np.zeros(0) for k, parts in cols.items() if parts}

    n_hist = v["n_hist"].astype(np.int64)
    row_of = np.repeat(np.arange(len(n_hist)), n_hist)
    btime = np.maximum(v["time"][row_of] - np.round(v["hist.gap"] * timediff_seconds).astype(np.int64), 1)
    order = np.lexsort((v["item_id"], v["user_id"], v["time"]))                  # impressions by time
    log_order = np.lexsort((btime, row_of))                                      # each row's history oldest first
    starts = np.concatenate([[0], np.cumsum(n_hist)[:-1]])
    day = v["time"] // 86400
    days = np.unique(day)
    if len(days) < 3:
        raise DataError(f"{raw_dir}: needs requests on at least 3 days (train, valid = the day before the last, "
                         f"test = the last day); found {len(days)}")
    split = np.where(day == days[-1], 2, np.where(day == days[-2], 1, 0))
    _, user = np.unique(v["user_id"], return_inverse=True)
    rows = {c.name: v[c.name][order] for c in schema.fields}
    rows.update(label=v["label"][order].astype(np.float32), time=v["time"][order], user=user[order],
                request=request_ids(user[order], v["time"][order]))
    log = {h: v[f"hist.{h}"][log_order] for h in HISTORY}
    log["time"] = btime[log_order]
    return write_prepared(out, schema=schema, fp=fp, rows=rows, split=split[order], log=log,
                          hist_start=starts[order], hist_end=(starts + n_hist)[order],
                          extra={"timediff_seconds": timediff_seconds})


