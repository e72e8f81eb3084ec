"""Generic schema-driven preparer: any CSV/TSV/Parquet table described by a feature schema (ctrscale.schema).

One input row = one impression. The schema names the columns:

- every field's source column (categorical values are kept as raw strings and vocab-encoded by `write_prepared`;
  numeric values must parse as finite floats),
- the label (0/1), the impression time (unix seconds, a positive integer), the user key and optionally the request
  key (without one, a request = the impressions of one user at one moment),
- for the behavior sequence: one column per behavior field plus the behavior-time column, each a `sep`-separated
  string, oldest first, the empty string being an empty history. Parquet may hold these as list columns instead.

Each row carries its own history. The behavior log is the concatenation of the rows' sequences, kept exactly as the
file gives them (nothing truncated: `max_len` applies at load time); histories with behaviors at or after their
impression's time, or not sorted oldest first, are counted in the report's `history_checks` and shown as warnings
in report.md (as are splits that are empty or hold a single label). Rows are stored ordered by
(time, user, input row index). The split is either by position in that order (80/10/10, `split="time"`) or read from
a column holding train/valid/test.

Data errors are never silent. Every data row of a file is either written or counted as skipped: for a CSV, rows
are counted from the file's own lines (every line after the header, a line ending at \n, \r\n or a lone \r), not
from what the CSV reader returned, and the report's `rows_read` (all inputs) and `lines_read` (CSV data lines)
equal the rows written plus the rows skipped. A row is bad when (checks in this order; a row with several problems
is counted once, under the first):

    malformed row (wrong number of columns)    CSV only
    not UTF-8                                  CSV only: the row's line holds bytes that are not UTF-8
    empty row                                  every used column empty (a blank line in a CSV)
    missing value                              user key, request key or split column empty
    label not 0/1
    timestamp missing | timestamp not an integer | timestamp not positive
    timestamp out of range                     not in 1980-01-01 .. 2100-01-01 as unix seconds (after time_unit)
    numeric field not a finite number
    split not train/valid/test
    sequence fields differ in length           a behavior field has another length than the behavior times
    sequence element is empty                  e.g. "3||5" or a trailing separator
    behavior time not a positive integer
    behavior time out of range                 as for the impression time

With on_bad_row="error" (the default) the earliest bad row of the first file that has one raises `BadRowError`,
naming the file, the row (and for CSV its line), the field and the offending value:
"data.csv: row 17 (line 18): field 'label': expected 0 or 1, got '2'; fix the row, or prepare with --on-bad-row
skip ...". With on_bad_row="skip" bad rows are dropped and counted by reason in the report's `bad_rows_skipped`.
Empty categorical values are not errors: "" is a category of its own.

Refused whatever on_bad_row says (a DataError naming the file, and the line where it can): a quoted value holding a
line break, or a quote never closed (values may not span lines: the reader would join the following lines, up to
the rest of the file, into one row, so which rows were lost could not be counted; the message names the line where
the quote opens); a header that is not UTF-8; two columns of the same name (CSV header or Parquet); a file pyarrow
cannot read at all. Lines longer than pyarrow's read block are read with a block sized to the longest line. A CSV is
read into memory whole (once) so that its lines can be counted and checked.

Times: the impression time and the behavior times are integers in `time_unit` (s by default; ms, us, ns), stored
as unix seconds (rounded down); Parquet timestamp columns carry their own unit. A time outside 1980-01-01 ..
2100-01-01 is a bad row whose message suggests the unit that would fit (milliseconds read as seconds would be the
year ~55000). The report says which unit was assumed (`time_unit`).

Content: when the schema declares a content table, `content_path` (or else `schema.content.path`, resolved against
the first input's directory when relative) is a .npy [rows, dim] indexed by the raw integer value of the content
key. `prepare_from_schema_file` resolves a relative `schema.content.path` against the schema file's directory.
"""
from __future__ import annotations

import csv
import gzip
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..errors import DataError, one_line
from ..schema import Schema, load_schema
from .prepare import request_ids, time_split, write_prepared
from .store import (TIME_RANGE, TIME_UNIT_NAMES, TIME_UNITS, check_inputs_outside, check_output, fingerprint,
                    is_prepared, outside_time_range)

VERSION = 2  # 2: line accounting, UTF-8 per row, time range and unit
REPLACEMENT = "\ufffd".encode()  # stands in for each byte that is not UTF-8
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
RESERVED = ("label", "time", "user", "request")  # keys of write_prepared's rows/log dicts
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INT_RE = r"^[0-9]{1,19}$"  # read exactly as int64 (float64 would round nanosecond times)
_MAX_INT = 2.0 ** 62  # times beyond this are not unix seconds (and would overflow int64)
_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".csv.gz": ",", ".tsv.gz": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")
_BLOCK = 1 << 20  # pyarrow's default read block; raised to fit the longest line when a line is longer
_HINT = ("; fix the row, or prepare with --on-bad-row skip (on_bad_row='skip') to drop such rows and count them "
         "in the report")


class BadRowError(DataError):
    """A malformed input row, named by file, row, field and value."""


class MissingColumnError(DataError):
    """A column the schema names is not in an input file."""


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (*_CSV_SUFFIXES, *_PARQUET_SUFFIXES):
        if name.endswith(s):
            return s
    raise DataError(f"{path}: unsupported input type; expected one of "
                    f"{sorted((*_CSV_SUFFIXES, *_PARQUET_SUFFIXES))}")


@dataclass
class _Raw:
    """One input file as read: the used columns, and where each table row came from."""
    path: Path
    table: pa.Table
    rownum: np.ndarray  # 1-based data row of each table row within the file (CSV: line = row + 1)
    is_csv: bool
    lines: int  # data rows in the file: CSV lines after the header (counted from the bytes), Parquet rows
    malformed: list = field(default_factory=list)  # (row, line, text, expected, actual) of unparsable CSV rows
    not_utf8: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # (line, byte, offset)

    def where(self, k: int) -> str:
        r = int(self.rownum[k])
        return f"{self.path}: row {r} (line {r + 1})" if self.is_csv else f"{self.path}: row {r}"


def _read(path: Path, columns: list[str], needed_by: dict[str, str]) -> _Raw:
    suffix = _suffix(path)
    if suffix in _PARQUET_SUFFIXES:
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except pa.ArrowException as e:  # any pyarrow failure: say which file
            raise DataError(f"{path}: cannot read as Parquet: {one_line(e)}") from e
        _check_columns(path, names, columns, needed_by)
        try:
            table = pq.read_table(path, columns=columns)
        except pa.ArrowException as e:
            raise DataError(f"{path}: cannot read as Parquet: {one_line(e)}") from e
        return _Raw(path, table, np.arange(1, table.num_rows + 1), is_csv=False, lines=table.num_rows)
    return _read_csv(path, _CSV_SUFFIXES[suffix], columns, needed_by)


# CSV. The file is read into memory once so that its lines can be counted independently of the CSV reader:
# rows in the file must equal rows written plus rows skipped. A line ends at \n, \r\n or a lone \r (as for
# pyarrow). Quoted values follow pyarrow's rules (a quote opens a value only at its start, "" inside one is a quote)
# but may not hold a line break: such a value (or an unclosed quote) is refused, naming the line where it opens,
# since the reader would silently join the following lines (up to the rest of the file) into one row.


def _load_bytes(path: Path) -> bytes:
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a readable gzip file ({one_line(e)}); check or re-compress it") from e
    else:
        data = path.read_bytes()
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a UTF-8 byte-order mark is not data


def _count_lines(data: bytes) -> int:
    breaks = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return breaks + (1 if data and data[-1:] not in (b"\n", b"\r") else 0)


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) byte range of every line, without its line break (only computed when a line must be named)."""
    b = np.frombuffer(data, np.uint8)
    lf, cr = b == 10, b == 13
    cr_lf = np.zeros(len(b), bool)
    cr_lf[:-1] = cr[:-1] & lf[1:]
    brk = np.flatnonzero(lf | (cr & ~cr_lf))  # last byte of each line break
    two = lf[brk] & (brk > 0) & cr[np.maximum(brk - 1, 0)]
    starts = np.concatenate([[0], brk + 1])
    ends = np.concatenate([brk - two, [len(b)]])
    if starts[-1] == len(b):  # the file ends with a line break: no empty last line
        starts, ends = starts[:-1], ends[:-1]
    return starts, ends


def _invalid_utf8(b: np.ndarray) -> np.ndarray:
    """Sorted positions of the bytes that are not part of a valid UTF-8 sequence (vectorised over the file)."""
    hi = np.flatnonzero(b >= 0x80)
    if not len(hi):
        return hi
    v = b[hi]
    need = np.select([v >= 0xF5, v >= 0xF0, v >= 0xE0, v >= 0xC2, v >= 0xC0], [-1, 3, 2, 1, -1], 0)  # 0: cont.
    bp = np.concatenate([b, np.zeros(4, np.uint8)])
    lead, k = hi[need > 0], need[need > 0]
    ok = np.ones(len(lead), bool)
    for j in (1, 2, 3):
        m = k >= j
        ok[m] &= (bp[lead[m] + j] & 0xC0) == 0x80
    first, second = bp[lead], bp[lead + 1]  # overlong forms, surrogates and code points above U+10FFFF
    ok &= ~(((first == 0xE0) & (second < 0xA0)) | ((first == 0xED) & (second > 0x9F))
            | ((first == 0xF0) & (second < 0x90)) | ((first == 0xF4) & (second > 0x8F)))
    claimed = np.zeros(len(bp), bool)
    for j in (1, 2, 3):
        claimed[lead[ok & (k >= j)] + j] = True
    bad = np.concatenate([hi[need < 0], lead[~ok], hi[(need == 0) & ~claimed[hi]]])
    return np.unique(bad)


def _field_re(delimiter: str) -> re.Pattern:
    """One line of fields as pyarrow parses them, every quoted value closed on the line."""
    d = re.escape(delimiter.encode())
    f = rb'(?:"(?:[^"]|"")*"(?!")[^' + d + rb']*|[^"' + d + rb'][^' + d + rb']*|)'
    return re.compile(f + rb"(?:" + d + f + rb")*")


def _open_quote(line: bytes, delimiter: str) -> int:
    """Byte offset of the quote that opens a value not closed on `line` (only called on such a line)."""
    d, i = delimiter.encode(), 0
    while 0 <= i <= len(line):
        if line[i:i + 1] == b'"':
            j = i + 1
            while True:
                k = line.find(b'"', j)
                if k < 0:
                    return i
                if line[k + 1:k + 2] != b'"':
                    break
                j = k + 2
            i = line.find(d, k + 1)
        else:
            i = line.find(d, i)
        if i < 0:
            break
        i += len(d)
    return 0


def _unclosed_quote(path: Path, ln: int, line: bytes, delimiter: str) -> DataError | None:
    """A DataError when `line` (number `ln`, without its line break) opens a quoted value it does not close."""
    if b'"' not in line or _field_re(delimiter).fullmatch(line):
        return None
    col = len(line[:_open_quote(line, delimiter)].decode("utf-8", "replace")) + 1
    where = "line 1 (the header)" if ln == 1 else f"row {ln - 1} (line {ln})"
    return DataError(
        f"{path}: {where}: a quoted value opens at character {col} and is not closed on that line; the CSV reader "
        f"would join the next line(s) into this row (an unclosed quote swallows the rest of the file), so it "
        f"cannot be skipped as one bad row. Close the quote (a quote inside a quoted value is written \"\"), or "
        f"remove the line break from the value: values may not span lines")


def _quote_error(path: Path, data: bytes, delimiter: str) -> DataError | None:
    """The first line that opens a quoted value it does not close, as a DataError (None when there is none).
    A loop over the lines holding a quote, run only once the line count shows a problem."""
    if b'"' not in data:
        return None
    starts, ends = _line_bounds(data)
    quotes = np.flatnonzero(np.frombuffer(data, np.uint8) == ord('"'))
    for ln in np.unique(np.searchsorted(starts, quotes, side="right")).tolist():
        err = _unclosed_quote(path, ln, data[starts[ln - 1]:ends[ln - 1]], delimiter)
        if err is not None:
            return err
    return None


def _last_line(data: bytes) -> bytes:
    end = len(data) - (2 if data.endswith(b"\r\n") else 1 if data[-1:] in (b"\n", b"\r") else 0)
    return data[max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end)) + 1:end]


def _csv_header(path: Path, data: bytes, delimiter: str) -> list[str]:
    m = re.search(rb"\r\n|\r|\n", data)
    line = data[:m.start()] if m else data
    err = _unclosed_quote(path, 1, line, delimiter)
    if err is not None:
        raise err
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: line 1 (the header) is not valid UTF-8 (byte {line[e.start]:#04x} at byte "
                        f"{e.start + 1}); save the file as UTF-8") from None
    header = next(csv.reader([text], delimiter=delimiter), [])
    if not header:
        raise DataError(f"{path}: empty file or blank header line; expected a header row naming the columns")
    return header


def _arrow_csv(data: bytes, delimiter: str, columns: list[str], threads: bool, block: int):
    bad = []

    def handler(row):
        bad.append((row.number, row.text, row.expected_columns, row.actual_columns))
        return "skip"

    table = pcsv.read_csv(
        pa.BufferReader(data), read_options=pcsv.ReadOptions(use_threads=threads, block_size=block),
        # newlines_in_values: cut blocks where the parser would, so a quoted line break joins rows the same way
        # everywhere and shows as fewer rows than lines (never as two half-rows that look valid)
        parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler, ignore_empty_lines=False,
                                        newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in columns},
                                            strings_can_be_null=False, quoted_strings_can_be_null=False))
    return table, bad


def _block_for(path: Path, data: bytes) -> int:
    """A read block that holds the longest line (pyarrow needs every row inside one block)."""
    starts, ends = _line_bounds(data)
    lengths = ends - starts
    longest = int(lengths.max()) if len(lengths) else 0
    if longest > (1 << 29):
        ln = int(np.argmax(lengths)) + 1
        raise DataError(f"{path}: line {ln} is {longest:,} bytes long, more than the {1 << 29:,} a row may have; "
                        f"check the file (a missing line break?)")
    return max(_BLOCK, 2 * longest + 1024)


def _read_csv(path: Path, delimiter: str, columns: list[str], needed_by: dict[str, str]) -> _Raw:
    data = _load_bytes(path)
    _check_columns(path, _csv_header(path, data, delimiter), columns, needed_by)
    lines = max(_count_lines(data) - 1, 0)

    # Bytes that are not UTF-8 spoil only their row, and only when a column the schema reads holds them: note (line,
    # byte, offset) and replace each by U+FFFD (never a delimiter, quote or line break, so the rows stay as they
    # are) for the reader, which would stop at them; _parse_file flags the rows whose used values hold U+FFFD.
    not_utf8 = np.zeros((0, 3), np.int64)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        b = np.frombuffer(data, np.uint8)
        pos = _invalid_utf8(b)
        starts, _ = _line_bounds(data)
        ln = np.searchsorted(starts, pos, side="right")
        first = np.unique(ln, return_index=True)[1]  # the first bad byte of each line
        not_utf8 = np.stack([ln[first], b[pos[first]], pos[first] - starts[ln[first] - 1] + 1], 1).astype(np.int64)
        reps = np.ones(len(b), np.int64)
        reps[pos] = 3
        fixed = np.repeat(b, reps)
        at = (np.cumsum(reps) - 3)[pos]  # where each replaced byte's three bytes start
        for k, byte in enumerate(REPLACEMENT):
            fixed[at + k] = byte
        data = fixed.tobytes()

    block, tries = _BLOCK, 0
    while True:
        try:
            table, bad = _arrow_csv(data, delimiter, columns, True, block)
            if bad:  # line numbers of invalid rows are only known to the single-threaded reader
                table, bad = _arrow_csv(data, delimiter, columns, False, block)
            break
        except pa.ArrowException as e:
            tries += 1
            if tries == 1 and "straddl" in str(e):  # a line longer than the block: read with larger blocks
                block = _block_for(path, data)
                continue
            err = _quote_error(path, data, delimiter)
            raise (err or DataError(f"{path}: cannot read as CSV: {one_line(e)}")) from e

    seen = table.num_rows + len(bad)
    if seen != lines:  # a quoted value took in line breaks: name where it opened
        err = _quote_error(path, data, delimiter)
        if err is None:
            raise RuntimeError(f"{path}: {lines} data lines but the CSV reader returned {seen} rows, and no quoted "
                               f"value spans lines: a bug in ctrscale's line accounting")
        raise err
    if lines:  # an unclosed quote on the last line joins nothing, yet is one
        err = _unclosed_quote(path, lines + 1, _last_line(data), delimiter)
        if err is not None:
            raise err
    malformed = sorted((line - 1, line, text, exp, act) for line, text, exp, act in bad)
    m = np.array([r for r, *_ in malformed], np.int64)
    k1 = np.arange(1, table.num_rows + 1)
    rownum = k1 + np.searchsorted(m - np.arange(len(m)), k1, side="right")  # skip the malformed rows' numbers
    return _Raw(path, table, rownum, is_csv=True, lines=lines, malformed=malformed, not_utf8=not_utf8)


def _check_columns(path: Path, names: list[str], columns: list[str], needed_by: dict[str, str]) -> None:
    first: dict[str, int] = {}
    for i, name in enumerate(names):  # which of two same-named columns the schema means is anyone's guess
        if name in first:
            raise DataError(f"{path}: column name {name!r} appears twice (columns {first[name] + 1} and {i + 1}); "
                            f"rename one of them")
        first[name] = i
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
        unit = TIME_UNITS[t.unit]
        v = pc.cast(pc.cast(arr, pa.int64()), pa.float64(), safe=False)
        v = pc.floor(pc.divide(v, float(unit))) if unit != 1 else v  # whole seconds, rounded down
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
        is_int = _np_bool(pc.match_substring_regex(s, _INT_RE)) & integral  # digits only, below 2**62
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


def _parse_file(raw: _Raw, schema: Schema, split_col: str | None, unit: str = "s") -> tuple[_Part, list[_Check]]:
    t, n = raw.table, raw.table.num_rows
    col = lambda c: t.column(c)  # noqa: E731
    val = lambda c, k: _short(t.column(c)[k].as_py())  # noqa: E731
    checks: list[_Check] = []

    bad_lines = raw.not_utf8[:, 0]  # the reader saw U+FFFD for the bad bytes: those values are not the file's
    def utf8_msg(k):
        _, byte, offset = raw.not_utf8[np.searchsorted(bad_lines, raw.rownum[k] + 1)]
        return (f"not valid UTF-8 (byte {int(byte):#04x} at byte {int(offset)} of the line); save the file as UTF-8 "
                f"(e.g. iconv -f latin1 -t utf-8)")

    not_utf8 = np.zeros(n, bool)
    if len(bad_lines):
        on_bad_line = np.isin(raw.rownum + 1, bad_lines)
        for c in dict.fromkeys(t.column_names):  # a bad byte in a column the schema does not read spoils nothing
            if pa.types.is_string(col(c).type):
                not_utf8 |= on_bad_line & _np_bool(pc.match_substring(col(c), "\ufffd"))
    checks.append(_Check("not UTF-8", not_utf8, utf8_msg))

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

    ts_value, present, integral, ts = _parse_time(col(schema.time), unit)
    def tmsg(k):
        return (f"field {schema.time!r}: expected unix {TIME_UNIT_NAMES[unit]} (a positive integer), "
                f"got {val(schema.time, k)}")

    checks.append(_Check("timestamp missing", ~present, lambda k: f"field {schema.time!r}: missing timestamp"))
    checks.append(_Check("timestamp not an integer", ~integral, tmsg))
    checks.append(_Check("timestamp not positive", ~(ts_value > 0), tmsg))
    checks.append(_Check("timestamp out of range", outside_time_range(ts),
                         lambda k: _range_msg(f"field {schema.time!r}", int(ts_value[k]), unit)))

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
        tvalue, _, tint, tsec = _parse_time(tflat, unit)
        bad_t = ~(tint & (tvalue > 0))
        far_t = ~bad_t & outside_time_range(tsec)
        seqs["time"] = _Seq(tlens, np.where(bad_t | far_t, 0, tsec))
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

        def far_msg(k):
            start = int(tlens[:k].sum())
            j = int(np.argmax(far_t[start:start + tlens[k]]))
            return _range_msg(f"{_fname(f'{sq.name}.time', sq.time)}: behavior {j + 1}", int(tvalue[start + j]), unit)

        checks.append(_Check("sequence fields differ in length", diff, diff_msg))
        checks.append(_Check("sequence element is empty", bad_empty, empty_msg))
        checks.append(_Check("behavior time not a positive integer",
                             np.bincount(row_t[bad_t], minlength=n) > 0, time_msg))
        checks.append(_Check("behavior time out of range", np.bincount(row_t[far_t], minlength=n) > 0, far_msg))

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
                  split: str = "time", force: bool = False, content_path: str | Path | None = None,
                  time_unit: str = "s") -> dict | None:
    """Prepare CSV/TSV/Parquet files described by `schema` into `out`; returns the report, or None when `out` is
    already prepared from the same schema, options and input files (pass force=True to redo it).

    split: "time" (rows ordered by (time, user, row index), first 80% train, next 10% valid, last 10% test) or the
    name of a column holding train/valid/test. on_bad_row: "error" (raise BadRowError) or "skip" (drop and count).
    time_unit: unit of the impression and behavior times in text or integer columns (s, ms, us, ns); stored as
    unix seconds (rounded down).
    """
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if not split:
        raise DataError("split must be 'time' or the name of a column holding train/valid/test")
    if time_unit not in TIME_UNITS:
        raise DataError(f"time_unit must be one of {', '.join(TIME_UNITS)}, got {time_unit!r}")
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not inputs:
        raise DataError("no input files")
    for p in inputs:
        _suffix(p)
        if not p.is_file():
            raise FileNotFoundError(f"input file {p} not found")
    clash = [f.name for f in schema.fields if f.name in RESERVED]
    clash += [f"{sq.name}.{f.name}" for sq in schema.sequences for f in sq.fields if f.name in RESERVED]
    if clash:
        raise DataError(f"schema {schema.name!r}: field name(s) {clash} are reserved ({', '.join(RESERVED)}); "
                        f"rename the field and point it at the column with `column:`")
    out = Path(out)
    cpath = _resolve_content(schema, inputs, content_path)
    check_inputs_outside(out, [*inputs, cpath])  # before anything is written: replacing `out` would delete them
    split_col = None if split == "time" else split
    fp = fingerprint("generic", VERSION, schema.to_dict(),
                     {"on_bad_row": on_bad_row, "split": split, "inputs": [str(p.resolve()) for p in inputs],
                      "content": str(cpath.resolve()) if cpath else None, "time_unit": time_unit},
                     files=inputs + ([cpath] if cpath else []))
    if not force and is_prepared(out, fp):
        return None
    check_output(out)  # refuse a folder we may not replace now, not after reading every input

    cols = _columns(schema, split_col)
    parts: list[_Part] = []
    bad_rows: dict[str, int] = {}
    rows_read = lines_read = 0
    for path in inputs:
        raw = _read(path, list(cols), cols)
        rows_read += raw.lines
        lines_read += raw.lines if raw.is_csv else 0
        try:
            part, checks = _parse_file(raw, schema, split_col, time_unit)
        except pa.ArrowException as e:  # a column of a type no check can read (e.g. a struct in Parquet)
            raise DataError(f"{path}: cannot read the schema's columns: {one_line(e)}") from e
        bad = np.flatnonzero(part.reason >= 0)
        if on_bad_row == "error" and (raw.malformed or len(bad)):  # the earliest bad row of the file
            first = []
            if raw.malformed:
                r, line, text, exp, act = raw.malformed[0]
                first.append((r, f"{path}: row {r} (line {line}): malformed row: expected {exp} columns, got {act}: "
                                 f"{_short(text)}"))
            if len(bad):
                k = int(bad[0])
                first.append((int(raw.rownum[k]), f"{raw.where(k)}: {checks[part.reason[k]].message(k)}"))
            raise BadRowError(min(first)[1] + _HINT)
        if raw.malformed:
            key = "malformed row (wrong number of columns)"
            bad_rows[key] = bad_rows.get(key, 0) + len(raw.malformed)
        for i, c in enumerate(checks):
            cnt = int((part.reason == i).sum())
            if cnt:
                bad_rows[c.reason] = bad_rows.get(c.reason, 0) + cnt
        parts.append(part)

    written = sum(int((p.reason < 0).sum()) for p in parts)
    if written + sum(bad_rows.values()) != rows_read:  # every row of every file is written or counted as skipped
        raise RuntimeError(f"bug: {rows_read} rows read but {written} written and {bad_rows} skipped")
    return _write(schema, parts, out, fp, cpath, split_col, bad_rows, rows_read,
                  extra={"inputs": [str(p) for p in inputs], "on_bad_row": on_bad_row, "split_mode": split,
                         "time_unit": time_unit, "lines_read": lines_read})


def _cat(parts: list[_Part], get) -> np.ndarray:
    arrays = [get(p) for p in parts]
    return np.concatenate(arrays) if arrays else np.zeros(0)


def _write(schema, parts, out, fp, cpath, split_col, bad_rows, rows_read, extra) -> dict:
    good = _cat(parts, lambda p: p.reason < 0)
    if not good.any():
        raise DataError(f"no rows left to prepare from {[str(p.raw.path) for p in parts]} "
                        f"(read {rows_read}, skipped {bad_rows}); check the schema against the files")
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
    try:
        table = np.load(cpath, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # not a .npy array (a pickle, text, a truncated file)
        raise DataError(f"content table {cpath}: not a readable .npy array ({one_line(e)})") from e
    if table.ndim != 2 or table.shape[1] != schema.content.dim:
        raise DataError(f"content table {cpath}: shape {table.shape}, expected [rows, {schema.content.dim}] "
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
        raise DataError(f"{parts[i].raw.where(g - offsets[i])}: field {key!r}: the content table {cpath} is "
                        f"indexed by the raw integer value of {key!r}, got {_short(str(badv))} "
                        f"({int((~ok).sum())} distinct non-integer value(s))")
    return table


def prepare_from_schema_file(schema_path: str | Path, inputs: list[str | Path], out: str | Path,
                             on_bad_row: str = "error", split: str = "time", force: bool = False,
                             content_path: str | Path | None = None, time_unit: str = "s") -> dict | None:
    """Load a schema YAML and prepare `inputs` with it. A relative content.path is resolved against the schema
    file's directory (unless `content_path` is given)."""
    schema_path = Path(schema_path)
    schema = load_schema(schema_path)
    if content_path is None and schema.content is not None and not Path(schema.content.path).is_absolute():
        content_path = schema_path.parent / schema.content.path
    return prepare_table(schema, inputs, out, on_bad_row=on_bad_row, split=split, force=force,
                         content_path=content_path, time_unit=time_unit)
