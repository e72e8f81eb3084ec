"""The row checks of the generic preparer: parse one block of an input (a `table_reader.Raw`) into raw-valued
columns, and find each row's first problem (the reasons and their order are listed in ctrscale.data.generic).
Vectorised; every helper takes a pyarrow (chunked) array of any sensible type."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schema import Schema, SequenceSpec
from .store import TIME_RANGE, TIME_UNIT_NAMES, TIME_UNITS, outside_time_range
from .table_reader import Raw

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INT_RE = r"^[0-9]{1,19}$"  # read exactly as int64 (float64 would round nanosecond times)
_MAX_INT = 2.0 ** 62  # times beyond this are not unix seconds (and would overflow int64)


def _as_str(arr):
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr
    return pc.cast(arr, pa.string())


def filled_str(arr) -> pa.Array:
    """Strings as one pyarrow array, nulls as ''."""
    a = pc.fill_null(_as_str(arr), "")
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def np_str(arr) -> np.ndarray:
    """Strings as a numpy unicode array, nulls as ''."""
    a = pc.fill_null(_as_str(arr), "")
    out = np.asarray(a.to_numpy(zero_copy_only=False), dtype=str) if len(a) else np.zeros(0, dtype="<U1")
    return out


def np_bool(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _parse_float(arr) -> tuple[np.ndarray, np.ndarray]:
    """(values with NaN where missing or unparsable, present: not null and not blank)."""
    t = arr.type
    if pa.types.is_timestamp(t):
        unit = TIME_UNITS[t.unit]
        v = pc.cast(pc.cast(arr, pa.int64()), pa.float64(), safe=False)
        v = pc.floor(pc.divide(v, float(unit))) if unit != 1 else v  # whole seconds, rounded down
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        v = pc.cast(arr, pa.float64(), safe=False)  # huge integers round; range checks come later
    else:
        s = pc.utf8_trim_whitespace(_as_str(arr))
        present = np_bool(pc.not_equal(s, ""))
        good = pc.fill_null(pc.match_substring_regex(s, _FLOAT_RE), False)
        v = pc.cast(pc.if_else(good, s, pa.scalar(None, pa.string())), pa.float64())
        return np.asarray(pc.fill_null(v, np.nan).to_numpy(zero_copy_only=False), np.float64), present
    present = np_bool(pc.is_valid(arr))
    return np.asarray(pc.fill_null(v, np.nan).to_numpy(zero_copy_only=False), np.float64), present


def _parse_time(arr, unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(value as written, int64; present; an integer; in unix seconds (floor) under `unit`). Integers are read
    exactly; a timestamp-typed (Parquet) column carries its own unit and is converted by it instead."""
    v, present = _parse_float(arr)
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(v) & (np.floor(v) == v) & (np.abs(v) < _MAX_INT)
    value = np.where(integral, v, 0).astype(np.int64)
    t = arr.type
    if pa.types.is_integer(t):
        exact = pc.cast(arr, pa.int64(), safe=False)
        value = np.where(integral, np.asarray(pc.fill_null(exact, 0).to_numpy(zero_copy_only=False)), value)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        s = pc.utf8_trim_whitespace(arr)
        is_int = np_bool(pc.match_substring_regex(s, _INT_RE)) & integral  # digits only, below 2**62
        exact = pc.cast(pc.if_else(pa.array(is_int), s, pa.scalar(None, pa.string())), pa.int64())
        value = np.where(is_int, np.asarray(pc.fill_null(exact, 0).to_numpy(zero_copy_only=False)), value)
    seconds = value if pa.types.is_timestamp(t) else value // TIME_UNITS[unit]
    return value, present, integral, seconds


def _range_msg(what: str, value: int, unit: str) -> str:
    """Why `value` (in `unit`) is not a plausible time, and which unit would make it one."""
    year = int(1970 + value // TIME_UNITS[unit] / 31_556_952)
    fits = [u for u, d in TIME_UNITS.items() if not outside_time_range(value // d)]
    hint = (f"it looks like {TIME_UNIT_NAMES[fits[0]]}: prepare with --time-unit {fits[0]} (time_unit={fits[0]!r})"
            if fits else "no unit (--time-unit s|ms|us|ns) makes it one")
    return (f"{what}: {value} is not a plausible time in unix {TIME_UNIT_NAMES[unit]}: it would be the year {year}, "
            f"and times must lie in {TIME_RANGE}; {hint}")


def _split_seq(arr, sep: str) -> tuple[np.ndarray, object]:
    """(length per row, all elements flattened); '' or null = empty history."""
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        s = _as_str(arr)
        s = pc.if_else(pc.fill_null(pc.equal(s, ""), True), pa.scalar(None, pa.string()), s)
        arr = pc.split_pattern(s, sep)
    lens = np.asarray(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False), np.int64)
    return lens, pc.list_flatten(arr)


def short(v) -> str:
    if v is None:
        return "null"
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _fname(name: str, column: str) -> str:
    return f"field {name!r}" if name == column else f"field {name!r} (column {column!r})"


@dataclass
class Check:
    reason: str
    bad: np.ndarray  # [n] bool
    message: Callable[[int], str]  # row -> what is wrong with it (called once, for the error)


@dataclass
class Seq:
    lens: np.ndarray       # [n] behaviors per row
    values: pa.Array | np.ndarray  # [E] raw strings (ids, pyarrow) or int64 (times, numpy)


@dataclass
class Part:
    """One block, parsed: raw-valued columns and the first failed check per row (-1 = good)."""
    raw: Raw
    n: int
    reason: np.ndarray
    cat: dict[str, pa.Array]  # raw strings
    num: dict[str, np.ndarray]
    label: np.ndarray
    time: np.ndarray
    user: pa.Array
    request: pa.Array | None
    split: np.ndarray | None
    seq: dict[str, Seq]  # behavior field name or 'time' -> elements


def _utf8_check(raw: Raw) -> Check:
    """Rows whose used values hold a byte that is not UTF-8 (the reader saw U+FFFD for it: not the file's value)."""
    t, n = raw.table, raw.table.num_rows
    bad_lines = raw.not_utf8[:, 0]

    def utf8_msg(k):
        _, byte, offset = raw.not_utf8[np.searchsorted(bad_lines, raw.rownum[k] + 1)]
        return (f"not valid UTF-8 (byte {int(byte):#04x} at byte {int(offset)} of the line); save the file as UTF-8 "
                f"(e.g. iconv -f latin1 -t utf-8)")

    not_utf8 = np.zeros(n, bool)
    if len(bad_lines):
        on_bad_line = np.isin(raw.rownum + 1, bad_lines)
        for c in dict.fromkeys(t.column_names):  # a bad byte in a column the schema does not read spoils nothing
            if pa.types.is_string(t.column(c).type):
                not_utf8 |= on_bad_line & np_bool(pc.match_substring(t.column(c), "\ufffd"))
    return Check("not UTF-8", not_utf8, utf8_msg)


def _empty_check(t: pa.Table) -> Check:
    empty = np.ones(t.num_rows, bool)
    for c in dict.fromkeys(t.column_names):
        a = t.column(c)
        if pa.types.is_list(a.type) or pa.types.is_large_list(a.type):
            empty &= np_bool(pc.fill_null(pc.equal(pc.list_value_length(a), 0), True))
        else:
            empty &= np_bool(pc.fill_null(pc.equal(_as_str(a), ""), True))
    return Check("empty row", empty, lambda k: "empty row (every used column is empty)")


def _sequence_checks(t: pa.Table, sq: SequenceSpec, unit: str, val: Callable) -> tuple[dict[str, Seq], list[Check]]:
    """The behaviors of each row (per behavior field and 'time') and the checks on them."""
    n = t.num_rows
    col = t.column
    seqs: dict[str, Seq] = {}
    tlens, tflat = _split_seq(col(sq.time), sq.sep)
    row_t = np.repeat(np.arange(n), tlens)
    tvalue, _, tint, tsec = _parse_time(tflat, unit)
    bad_t = ~(tint & (tvalue > 0))
    far_t = ~bad_t & outside_time_range(tsec)
    seqs["time"] = Seq(tlens, np.where(bad_t | far_t, 0, tsec))
    diff = np.zeros(n, bool)
    bad_empty = np.zeros(n, bool)
    empty_msgs = []
    for f in sq.fields:
        lens, flat = _split_seq(col(f.source), sq.sep)
        ids = filled_str(flat)
        empty_at = np_bool(pc.equal(ids, ""))
        seqs[f.name] = Seq(lens, ids)
        diff |= lens != tlens
        row_f = np.repeat(np.arange(n), lens)
        e = np.bincount(row_f[empty_at], minlength=n) > 0
        bad_empty |= e
        empty_msgs.append((f, lens, empty_at, e))

    def diff_msg(k):
        for f in sq.fields:
            a = seqs[f.name].lens[k]
            if a != tlens[k]:
                return (f"{_fname(f'{sq.name}.{f.name}', f.source)}: {a} behaviors but the behavior times "
                        f"{sq.time!r} have {tlens[k]} (row values {val(f.source, k)} and {val(sq.time, k)})")
        return "sequence fields differ in length"

    def empty_msg(k):
        for f, lens, empty_at, e in empty_msgs:
            if e[k]:
                start = int(lens[:k].sum())
                j = int(np.argmax(empty_at[start:start + lens[k]]))
                return (f"{_fname(f'{sq.name}.{f.name}', f.source)}: behavior {j + 1} is empty "
                        f"in {val(f.source, k)}")
        return "sequence element is empty"

    def time_msg(k):
        start = int(tlens[:k].sum())
        j = int(np.argmax(bad_t[start:start + tlens[k]]))
        return (f"{_fname(f'{sq.name}.time', sq.time)}: behavior {j + 1}: expected a positive integer unix "
                f"time, got {short(tflat[start + j].as_py())}")

    def far_msg(k):
        start = int(tlens[:k].sum())
        j = int(np.argmax(far_t[start:start + tlens[k]]))
        return _range_msg(f"{_fname(f'{sq.name}.time', sq.time)}: behavior {j + 1}", int(tvalue[start + j]), unit)

    checks = [Check("sequence fields differ in length", diff, diff_msg),
              Check("sequence element is empty", bad_empty, empty_msg),
              Check("behavior time not a positive integer", np.bincount(row_t[bad_t], minlength=n) > 0, time_msg),
              Check("behavior time out of range", np.bincount(row_t[far_t], minlength=n) > 0, far_msg)]
    return seqs, checks


def parse_block(raw: Raw, schema: Schema, split_col: str | None, unit: str = "s") -> tuple[Part, list[Check]]:
    """Parse a block's columns and check its rows; Part.reason indexes the returned checks."""
    t, n = raw.table, raw.table.num_rows
    col = lambda c: t.column(c)  # noqa: E731
    val = lambda c, k: short(t.column(c)[k].as_py())  # noqa: E731
    checks: list[Check] = [_utf8_check(raw), _empty_check(t)]  # in the order of the reasons (first one counts)

    keys = [(schema.user_key, "user key")] + ([(schema.request_key, "request key")] if schema.request_key else []) \
        + ([(split_col, "split column")] if split_col else [])
    key_vals = {}
    for c, what in keys:
        key_vals[c] = filled_str(col(c))
        checks.append(Check("missing value", np_bool(pc.equal(key_vals[c], "")),
                            lambda k, c=c, what=what: f"field {c!r}: missing value ({what})"))

    label, present = _parse_float(col(schema.label))
    checks.append(Check("label not 0/1", ~present | ~np.isin(label, (0.0, 1.0)),
                        lambda k: f"field {schema.label!r}: expected 0 or 1, got {val(schema.label, k)}"))

    ts_value, present, integral, ts = _parse_time(col(schema.time), unit)
    def tmsg(k):
        return (f"field {schema.time!r}: expected unix {TIME_UNIT_NAMES[unit]} (a positive integer), "
                f"got {val(schema.time, k)}")

    checks.append(Check("timestamp missing", ~present, lambda k: f"field {schema.time!r}: missing timestamp"))
    checks.append(Check("timestamp not an integer", ~integral, tmsg))
    checks.append(Check("timestamp not positive", ~(ts_value > 0), tmsg))
    checks.append(Check("timestamp out of range", outside_time_range(ts),
                        lambda k: _range_msg(f"field {schema.time!r}", int(ts_value[k]), unit)))

    num = {}
    for f in schema.numeric:
        v, _ = _parse_float(col(f.source))
        num[f.name] = v
        checks.append(Check("numeric field not a finite number", ~np.isfinite(v),
                            lambda k, f=f: f"{_fname(f.name, f.source)}: expected a finite number, "
                                           f"got {val(f.source, k)}"))

    split = None
    if split_col:
        s = np.char.lower(np.char.strip(np_str(key_vals[split_col])))
        split = np.full(n, -1, np.int8)
        for name, code in SPLIT_CODES.items():
            split[s == name] = code
        checks.append(Check("split not train/valid/test", split < 0,
                            lambda k: f"field {split_col!r}: expected train, valid or test, got {val(split_col, k)}"))

    seqs: dict[str, Seq] = {}
    if schema.sequences:
        seqs, seq_checks = _sequence_checks(t, schema.sequences[0], unit, val)
        checks += seq_checks

    reason = np.full(n, -1, np.int64)
    for i, c in enumerate(checks):
        reason[(reason < 0) & c.bad] = i
    part = Part(raw=raw, n=n, reason=reason,
                cat={f.name: filled_str(col(f.source)) for f in schema.categorical},
                num=num, label=label, time=np.where(integral, ts, 0).astype(np.int64),
                user=key_vals[schema.user_key],
                request=key_vals[schema.request_key] if schema.request_key else None,
                split=split, seq=seqs)
    return part, checks

