"""Generic schema-driven preparer: any CSV/TSV/Parquet table described by a feature schema (ctrscale.schema).

One input row = one impression. The schema names the columns:

- every field's source column (categorical values are kept as raw strings and vocab-encoded by `write_prepared`;
  numeric values must parse as finite floats),
- the label (0/1), the impression time (unix seconds, a positive integer), the user key and optionally the request
  key (without one, a request = the impressions of one user at one moment),
- for the behavior sequence: one column per behavior field plus the behavior-time column, each a `sep`-separated
  string, oldest first, the empty string being an empty history. Parquet may hold these as list columns instead.

Each row carries its own history. The behavior log is the concatenation of the rows' sequences, kept exactly as the
file gives them (nothing truncated: `max_len` applies at load time). Rows are stored ordered by
(time, user, input row index). The split is either by position in that order (80/10/10, `split="time"`) or read from
a column holding train/valid/test.

Data errors are never silent. A row is bad when (checks in this order; a row with several problems is counted once,
under the first):

    malformed row (wrong number of columns)    CSV only
    empty row                                  every used column empty (a blank line in a CSV)
    missing value                              user key, request key or split column empty
    label not 0/1
    timestamp missing | timestamp not an integer | timestamp not positive
    numeric field not a finite number
    split not train/valid/test
    sequence fields differ in length           a behavior field has another length than the behavior times
    sequence element is empty                  e.g. "3||5" or a trailing separator
    behavior time not a positive integer

With on_bad_row="error" (the default) the first bad row of the first file that has one raises `BadRowError`,
naming the file, the row (and for CSV its line), the field and the offending value:
"data.csv: row 17 (line 18): field 'label': expected 0 or 1, got '2'". With on_bad_row="skip" bad rows are dropped and
counted by reason in the report's `bad_rows_skipped`; the report's `rows_read` equals the rows written plus the rows
skipped. Empty categorical values are not errors: "" is a category of its own.

Content: when the schema declares a content table, `content_path` (or else `schema.content.path`, resolved against
the first input's directory when relative) is a .npy [rows, dim] indexed by the raw integer value of the content
key. `prepare_from_schema_file` resolves a relative `schema.content.path` against the schema file's directory.
"""
from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..schema import Schema, load_schema
from .prepare import request_ids, time_split, write_prepared
from .store import fingerprint, is_prepared

VERSION = 1
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
RESERVED = ("label", "time", "user", "request")  # keys of write_prepared's rows/log dicts
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_MAX_INT = 2.0 ** 62  # times beyond this are not unix seconds (and would overflow int64)
_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".csv.gz": ",", ".tsv.gz": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")


class BadRowError(ValueError):
    """A malformed input row, named by file, row, field and value."""


class MissingColumnError(ValueError):
    """A column the schema names is not in an input file."""


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (*_CSV_SUFFIXES, *_PARQUET_SUFFIXES):
        if name.endswith(s):
            return s
    raise ValueError(f"{path}: unsupported input type; expected one of "
                     f"{sorted((*_CSV_SUFFIXES, *_PARQUET_SUFFIXES))}")


def _csv_header(path: Path, delimiter: str) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        try:
            header = next(csv.reader(f, delimiter=delimiter))
        except StopIteration:
            header = []
    if not header:
        raise ValueError(f"{path}: empty file or blank header line; expected a header row naming the columns")
    return header


@dataclass
class _Raw:
    """One input file as read: the used columns, and where each table row came from."""
    path: Path
    table: pa.Table
    rownum: np.ndarray  # 1-based data row of each table row within the file
    is_csv: bool
    malformed: list = field(default_factory=list)  # (row, line, text, expected, actual) of unparsable CSV rows

    def where(self, k: int) -> str:
        r = int(self.rownum[k])
        return f"{self.path}: row {r} (line {r + 1})" if self.is_csv else f"{self.path}: row {r}"


def _read(path: Path, columns: list[str], needed_by: dict[str, str]) -> _Raw:
    suffix = _suffix(path)
    if suffix in _PARQUET_SUFFIXES:
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception as e:  # noqa: BLE001 - any pyarrow failure: say which file
            raise ValueError(f"{path}: cannot read as Parquet: {e}") from e
        _check_columns(path, names, columns, needed_by)
        table = pq.read_table(path, columns=columns)
        return _Raw(path, table, np.arange(1, table.num_rows + 1), is_csv=False)

    delimiter = _CSV_SUFFIXES[suffix]
    _check_columns(path, _csv_header(path, delimiter), columns, needed_by)

    def read(use_threads: bool):
        bad = []

        def handler(row):
            bad.append((row.number, row.text, row.expected_columns, row.actual_columns))
            return "skip"

        table = pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(use_threads=use_threads),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler,
                                            ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(include_columns=columns,
                                                column_types={c: pa.string() for c in columns},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False))
        return table, bad

    try:
        table, bad = read(True)
        if bad:  # line numbers of invalid rows are only known to the single-threaded reader
            table, bad = read(False)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read as CSV: {e}") from e
    malformed = sorted((line - 1, line, text, exp, act) for line, text, exp, act in bad)
    m = np.array([r for r, *_ in malformed], np.int64)
    k1 = np.arange(1, table.num_rows + 1)
    rownum = k1 + np.searchsorted(m - np.arange(len(m)), k1, side="right")  # skip the malformed rows' numbers
    return _Raw(path, table, rownum, is_csv=True, malformed=malformed)


def _check_columns(path: Path, names: list[str], columns: list[str], needed_by: dict[str, str]) -> None:
    have = set(names)
    missing = [c for c in columns if c not in have]
    if missing:
        c = missing[0]
        raise MissingColumnError(
            f"{path}: unknown column {c!r} (the schema's {needed_by[c]}) is not in the file"
            + (f"; also missing: {missing[1:]}" if len(missing) > 1 else "")
            + f"; the file has columns {names}")


# ----------------------------------------------------------------------------------------------------------------
# Parsing (vectorised; every helper takes a pyarrow (chunked) array of any sensible type)


def _as_str(arr):
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr
    return pc.cast(arr, pa.string())


def _np_str(arr) -> np.ndarray:
    """Strings as a numpy unicode array, nulls as ''."""
    a = pc.fill_null(_as_str(arr), "")
    out = np.asarray(a.to_numpy(zero_copy_only=False), dtype=str) if len(a) else np.zeros(0, dtype="<U1")
    return out


def _np_bool(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _parse_float(arr) -> tuple[np.ndarray, np.ndarray]:
    """(values with NaN where missing or unparsable, present: not null and not blank)."""
    t = arr.type
    if pa.types.is_timestamp(t):
        unit = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
        v = pc.cast(pc.cast(arr, pa.int64()), pa.float64(), safe=False)
        v = pc.divide(v, float(unit)) if unit != 1 else v
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        v = pc.cast(arr, pa.float64(), safe=False)  # huge integers round; range checks come later
    else:
        s = pc.utf8_trim_whitespace(_as_str(arr))
        present = _np_bool(pc.not_equal(s, ""))
        good = pc.fill_null(pc.match_substring_regex(s, _FLOAT_RE), False)
        v = pc.cast(pc.if_else(good, s, pa.scalar(None, pa.string())), pa.float64())
        return np.asarray(pc.fill_null(v, np.nan).to_numpy(zero_copy_only=False), np.float64), present
    present = _np_bool(pc.is_valid(arr))
    return np.asarray(pc.fill_null(v, np.nan).to_numpy(zero_copy_only=False), np.float64), present


def _split_seq(arr, sep: str) -> tuple[np.ndarray, object]:
    """(length per row, all elements flattened); '' or null = empty history."""
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        s = _as_str(arr)
        s = pc.if_else(pc.fill_null(pc.equal(s, ""), True), pa.scalar(None, pa.string()), s)
        arr = pc.split_pattern(s, sep)
    lens = np.asarray(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False), np.int64)
    return lens, pc.list_flatten(arr)


def _short(v) -> str:
    if v is None:
        return "null"
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _fname(name: str, column: str) -> str:
    return f"field {name!r}" if name == column else f"field {name!r} (column {column!r})"


@dataclass
class _Check:
    reason: str
    bad: np.ndarray  # [n] bool
    message: Callable[[int], str]  # row -> what is wrong with it (called once, for the error)


@dataclass
class _Seq:
    lens: np.ndarray       # [n] behaviors per row
    values: np.ndarray     # [E] raw strings (ids) or int64 (times)


@dataclass
class _Part:
    """One file, parsed: raw-valued columns and the first failed check per row (-1 = good)."""
    raw: _Raw
    n: int
    reason: np.ndarray
    cat: dict[str, np.ndarray]
    num: dict[str, np.ndarray]
    label: np.ndarray
    time: np.ndarray
    user: np.ndarray
    request: np.ndarray | None
    split: np.ndarray | None
    seq: dict[str, _Seq]  # behavior field name or 'time' -> elements


def _parse_file(raw: _Raw, schema: Schema, split_col: str | None) -> tuple[_Part, list[_Check]]:
    t, n = raw.table, raw.table.num_rows
    col = lambda c: t.column(c)  # noqa: E731
    val = lambda c, k: _short(t.column(c)[k].as_py())  # noqa: E731
    checks: list[_Check] = []

    used = list(dict.fromkeys(t.column_names))
    empty = np.ones(n, bool)
    for c in used:
        a = col(c)
        if pa.types.is_list(a.type) or pa.types.is_large_list(a.type):
            empty &= _np_bool(pc.fill_null(pc.equal(pc.list_value_length(a), 0), True))
        else:
            empty &= _np_bool(pc.fill_null(pc.equal(_as_str(a), ""), True))
    checks.append(_Check("empty row", empty, lambda k: "empty row (every used column is empty)"))

    keys = [(schema.user_key, "user key")] + ([(schema.request_key, "request key")] if schema.request_key else []) \
        + ([(split_col, "split column")] if split_col else [])
    key_vals = {}
    for c, what in keys:
        key_vals[c] = _np_str(col(c))
        checks.append(_Check("missing value", key_vals[c] == "",
                             lambda k, c=c, what=what: f"field {c!r}: missing value ({what})"))

    label, present = _parse_float(col(schema.label))
    checks.append(_Check("label not 0/1", ~present | ~np.isin(label, (0.0, 1.0)),
                         lambda k: f"field {schema.label!r}: expected 0 or 1, got {val(schema.label, k)}"))

    ts, present = _parse_float(col(schema.time))
    def tmsg(k):
        return f"field {schema.time!r}: expected unix seconds (a positive integer), got {val(schema.time, k)}"

    checks.append(_Check("timestamp missing", ~present, lambda k: f"field {schema.time!r}: missing timestamp"))
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(ts) & (np.floor(ts) == ts) & (np.abs(ts) < _MAX_INT)
    checks.append(_Check("timestamp not an integer", ~integral, tmsg))
    checks.append(_Check("timestamp not positive", ~(ts > 0), tmsg))

    num = {}
    for f in schema.numeric:
        v, _ = _parse_float(col(f.source))
        num[f.name] = v
        checks.append(_Check("numeric field not a finite number", ~np.isfinite(v),
                             lambda k, f=f: f"{_fname(f.name, f.source)}: expected a finite number, "
                                            f"got {val(f.source, k)}"))

    split = None
    if split_col:
        s = np.char.lower(np.char.strip(key_vals[split_col]))
        split = np.full(n, -1, np.int8)
        for name, code in SPLIT_CODES.items():
            split[s == name] = code
        checks.append(_Check("split not train/valid/test", split < 0,
                             lambda k: f"field {split_col!r}: expected train, valid or test, got {val(split_col, k)}"))

    seqs: dict[str, _Seq] = {}
    if schema.sequences:
        sq = schema.sequences[0]
        tlens, tflat = _split_seq(col(sq.time), sq.sep)
        row_t = np.repeat(np.arange(n), tlens)
        tv, _ = _parse_float(tflat)
        with np.errstate(invalid="ignore"):
            bad_t = ~(np.isfinite(tv) & (np.floor(tv) == tv) & (tv > 0) & (tv < _MAX_INT))
        seqs["time"] = _Seq(tlens, np.where(bad_t, 0, tv).astype(np.int64))
        diff = np.zeros(n, bool)
        bad_empty = np.zeros(n, bool)
        empty_msgs = []
        for f in sq.fields:
            lens, flat = _split_seq(col(f.source), sq.sep)
            ids = _np_str(flat)
            seqs[f.name] = _Seq(lens, ids)
            diff |= lens != tlens
            row_f = np.repeat(np.arange(n), lens)
            e = np.bincount(row_f[ids == ""], minlength=n) > 0
            bad_empty |= e
            empty_msgs.append((f, lens, ids, e))

        def diff_msg(k):
            for f in sq.fields:
                a = seqs[f.name].lens[k]
                if a != tlens[k]:
                    return (f"{_fname(f'{sq.name}.{f.name}', f.source)}: {a} behaviors but the behavior times "
                            f"{sq.time!r} have {tlens[k]} (row values {val(f.source, k)} and {val(sq.time, k)})")
            return "sequence fields differ in length"

        def empty_msg(k):
            for f, lens, ids, e in empty_msgs:
                if e[k]:
                    start = int(lens[:k].sum())
                    j = int(np.argmax(ids[start:start + lens[k]] == ""))
                    return (f"{_fname(f'{sq.name}.{f.name}', f.source)}: behavior {j + 1} is empty "
                            f"in {val(f.source, k)}")
            return "sequence element is empty"

        def time_msg(k):
            start = int(tlens[:k].sum())
            j = int(np.argmax(bad_t[start:start + tlens[k]]))
            return (f"{_fname(f'{sq.name}.time', sq.time)}: behavior {j + 1}: expected a positive integer unix "
                    f"time, got {_short(tflat[start + j].as_py())}")

        checks.append(_Check("sequence fields differ in length", diff, diff_msg))
        checks.append(_Check("sequence element is empty", bad_empty, empty_msg))
        checks.append(_Check("behavior time not a positive integer",
                             np.bincount(row_t[bad_t], minlength=n) > 0, time_msg))

    reason = np.full(n, -1, np.int64)
    for i, c in enumerate(checks):
        reason[(reason < 0) & c.bad] = i
    part = _Part(raw=raw, n=n, reason=reason,
                 cat={f.name: _np_str(col(f.source)) for f in schema.categorical},
                 num=num, label=label, time=np.where(integral, ts, 0).astype(np.int64),
                 user=key_vals[schema.user_key],
                 request=key_vals[schema.request_key] if schema.request_key else None,
                 split=split, seq=seqs)
    return part, checks


# ----------------------------------------------------------------------------------------------------------------
# Preparation


def _columns(schema: Schema, split_col: str | None) -> dict[str, str]:
    """Used column -> what the schema calls it (for messages), in a stable order."""
    cols: dict[str, str] = {}
    add = lambda c, what: cols.setdefault(c, what)  # noqa: E731
    add(schema.label, "label")
    add(schema.time, "time")
    add(schema.user_key, "user_key")
    if schema.request_key:
        add(schema.request_key, "request_key")
    for f in schema.fields:
        add(f.source, f"field {f.name!r}")
    for sq in schema.sequences:
        add(sq.time, f"sequence {sq.name!r} time")
        for f in sq.fields:
            add(f.source, f"sequence {sq.name!r} field {f.name!r}")
    if split_col:
        add(split_col, "split column")
    return cols


def _resolve_content(schema: Schema, inputs: list[Path], content_path) -> Path | None:
    if schema.content is None:
        return None
    p = Path(content_path) if content_path is not None else Path(schema.content.path)
    if content_path is None and not p.is_absolute():
        p = inputs[0].parent / p
    if not p.exists():
        raise FileNotFoundError(f"content table {p} (schema content.path {schema.content.path!r}) not found")
    return p


def prepare_table(schema: Schema, inputs: list[str | Path], out: str | Path, on_bad_row: str = "error",
                  split: str = "time", force: bool = False, content_path: str | Path | None = None) -> dict | None:
    """Prepare CSV/TSV/Parquet files described by `schema` into `out`; returns the report, or None when `out` is
    already prepared from the same schema, options and input files (pass force=True to redo it).

    split: "time" (rows ordered by (time, user, row index), first 80% train, next 10% valid, last 10% test) or the
    name of a column holding train/valid/test. on_bad_row: "error" (raise BadRowError) or "skip" (drop and count).
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if not split:
        raise ValueError("split must be 'time' or the name of a column holding train/valid/test")
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not inputs:
        raise ValueError("no input files")
    for p in inputs:
        _suffix(p)
        if not p.is_file():
            raise FileNotFoundError(f"input file {p} not found")
    clash = [f.name for f in schema.fields if f.name in RESERVED]
    clash += [f"{sq.name}.{f.name}" for sq in schema.sequences for f in sq.fields if f.name in RESERVED]
    if clash:
        raise ValueError(f"schema {schema.name!r}: field name(s) {clash} are reserved ({', '.join(RESERVED)}); "
                         f"rename the field and point it at the column with `column:`")
    out = Path(out)
    cpath = _resolve_content(schema, inputs, content_path)
    split_col = None if split == "time" else split
    fp = fingerprint("generic", VERSION, schema.to_dict(),
                     {"on_bad_row": on_bad_row, "split": split, "inputs": [str(p.resolve()) for p in inputs],
                      "content": str(cpath.resolve()) if cpath else None},
                     files=inputs + ([cpath] if cpath else []))
    if not force and is_prepared(out, fp):
        return None

    cols = _columns(schema, split_col)
    parts: list[_Part] = []
    bad_rows: dict[str, int] = {}
    rows_read = 0
    for path in inputs:
        raw = _read(path, list(cols), cols)
        rows_read += raw.table.num_rows + len(raw.malformed)
        if raw.malformed:
            r, line, text, exp, act = raw.malformed[0]
            if on_bad_row == "error":
                raise BadRowError(f"{path}: row {r} (line {line}): malformed row: expected {exp} columns, "
                                  f"got {act}: {_short(text)}")
            bad_rows["malformed row (wrong number of columns)"] = \
                bad_rows.get("malformed row (wrong number of columns)", 0) + len(raw.malformed)
        part, checks = _parse_file(raw, schema, split_col)
        bad = np.flatnonzero(part.reason >= 0)
        if len(bad) and on_bad_row == "error":
            k = int(bad[0])
            raise BadRowError(f"{raw.where(k)}: {checks[part.reason[k]].message(k)}")
        for i, c in enumerate(checks):
            cnt = int((part.reason == i).sum())
            if cnt:
                bad_rows[c.reason] = bad_rows.get(c.reason, 0) + cnt
        parts.append(part)

    return _write(schema, parts, out, fp, cpath, split_col, bad_rows, rows_read,
                  extra={"inputs": [str(p) for p in inputs], "on_bad_row": on_bad_row, "split_mode": split})


def _cat(parts: list[_Part], get) -> np.ndarray:
    arrays = [get(p) for p in parts]
    return np.concatenate(arrays) if arrays else np.zeros(0)


def _write(schema, parts, out, fp, cpath, split_col, bad_rows, rows_read, extra) -> dict:
    good = _cat(parts, lambda p: p.reason < 0)
    if not good.any():
        raise ValueError(f"no rows left to prepare from {[str(p.raw.path) for p in parts]} "
                         f"(read {rows_read}, skipped {bad_rows})")
    keep = np.flatnonzero(good)
    time = _cat(parts, lambda p: p.time)[keep]
    user_raw = _cat(parts, lambda p: p.user)[keep]
    _, user = np.unique(user_raw, return_inverse=True)
    user = user.ravel().astype(np.int64)
    order = np.lexsort((np.arange(len(keep)), user, time))  # (time, user, input row)
    sel = keep[order]  # global row index of each stored row, in storage order
    time, user = time[order], user[order]

    if split_col:
        split = _cat(parts, lambda p: p.split)[sel].astype(np.int8)
    else:
        split = time_split(len(sel))
    if schema.request_key:
        _, request = np.unique(_cat(parts, lambda p: p.request)[sel], return_inverse=True)
        request = request.ravel().astype(np.int64)
    else:
        request = request_ids(user, time)

    rows = {f.name: _cat(parts, lambda p, f=f: p.cat[f.name])[sel] for f in schema.categorical}
    rows.update({f.name: _cat(parts, lambda p, f=f: p.num[f.name])[sel] for f in schema.numeric})
    rows.update(label=_cat(parts, lambda p: p.label)[sel].astype(np.float32), time=time, user=user,
                request=request)

    log: dict[str, np.ndarray] = {}
    hist_start = hist_end = np.zeros(len(sel), np.int64)
    if schema.sequences:
        sq = schema.sequences[0]
        for name in ["time"] + [f.name for f in sq.fields]:
            lens = _cat(parts, lambda p: p.seq[name].lens).astype(np.int64)
            values = _cat(parts, lambda p: p.seq[name].values)
            raw_start = np.cumsum(lens) - lens
            new_lens = lens[sel]  # equal for every field on a good row
            new_end = np.cumsum(new_lens)
            new_start = new_end - new_lens
            elem = np.repeat(raw_start[sel] - new_start, new_lens) + np.arange(int(new_end[-1]) if len(sel) else 0)
            log[name] = values[elem]
            hist_start, hist_end = new_start, new_end
        # The file declares the histories; flag (never alter) those that look leaky or out of order.
        row_of = np.repeat(np.arange(len(sel)), hist_end - hist_start)
        late = np.bincount(row_of[log["time"] >= time[row_of]], minlength=len(sel)) > 0
        same_row = row_of[1:] == row_of[:-1]
        unsorted = np.bincount(row_of[1:][same_row & (log["time"][1:] < log["time"][:-1])],
                               minlength=len(sel)) > 0
        extra["history_checks"] = {"rows_with_behaviors_not_before_impression": int(late.sum()),
                                   "rows_with_unsorted_history": int(unsorted.sum())}

    content = None
    if cpath is not None:
        content = _load_content(schema, cpath, parts, sel)
        uniq = np.unique(rows[schema.content.key]).astype(np.int64)
        extra["content"] = {"path": str(cpath), "rows": int(content.shape[0]),
                            "keys_without_vector": int((uniq >= content.shape[0]).sum())}

    extra["rows_read"] = rows_read
    extra["rows_written"] = int(len(sel))
    return write_prepared(out, schema=schema, fp=fp, rows=rows, split=split, log=log, hist_start=hist_start,
                          hist_end=hist_end, content_raw=content, bad_rows=bad_rows, extra=extra)


def _load_content(schema: Schema, cpath: Path, parts: list[_Part], sel: np.ndarray) -> np.ndarray:
    table = np.load(cpath, mmap_mode="r")
    if table.ndim != 2 or table.shape[1] != schema.content.dim:
        raise ValueError(f"content table {cpath}: shape {table.shape}, expected [rows, {schema.content.dim}] "
                         f"(schema content.dim)")
    key = schema.content.key
    values = _cat(parts, lambda p: p.cat[key])[sel]
    uniq = np.unique(values)
    ok = _np_bool(pc.match_substring_regex(pa.array(uniq.tolist(), pa.string()), r"^[0-9]{1,18}$"))
    if not ok.all():
        badv = uniq[~ok][0]
        g = int(sel[np.flatnonzero(values == badv)[0]])
        offsets = np.cumsum([0] + [p.n for p in parts])
        i = int(np.searchsorted(offsets, g, side="right") - 1)
        raise ValueError(f"{parts[i].raw.where(g - offsets[i])}: field {key!r}: the content table {cpath} is "
                         f"indexed by the raw integer value of {key!r}, got {_short(str(badv))} "
                         f"({int((~ok).sum())} distinct non-integer value(s))")
    return table


def prepare_from_schema_file(schema_path: str | Path, inputs: list[str | Path], out: str | Path,
                             on_bad_row: str = "error", split: str = "time", force: bool = False,
                             content_path: str | Path | None = None) -> dict | None:
    """Load a schema YAML and prepare `inputs` with it. A relative content.path is resolved against the schema
    file's directory (unless `content_path` is given)."""
    schema_path = Path(schema_path)
    schema = load_schema(schema_path)
    if content_path is None and schema.content is not None and not Path(schema.content.path).is_absolute():
        content_path = schema_path.parent / schema.content.path
    return prepare_table(schema, inputs, out, on_bad_row=on_bad_row, split=split, force=force,
                         content_path=content_path)
