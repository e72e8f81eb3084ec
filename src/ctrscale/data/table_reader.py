"""Reading CSV/TSV (optionally gzipped) and Parquet inputs in blocks, with every check on the bytes of a CSV.

`read_blocks` yields one `Raw` per block: the used columns as a pyarrow table and where each of its rows came from.
A CSV is read BLOCK_BYTES at a time, cut after a line break (a file whose lines end only at a lone \r is read whole),
so memory is bounded by a block, not the file. Each block's lines are counted from its bytes, independently of the
CSV reader: rows in the file must equal rows written plus rows skipped. A line ends at \n, \r\n or a lone \r (as
for pyarrow). Quoted values follow pyarrow's rules (a quote opens a value only at its start, "" inside one is a
quote) but may not hold a line break: such a value (or an unclosed quote) is refused, naming the line where it
opens, since the reader would silently join the following lines (up to the rest of the file) into one row.
Parquet is read a row batch at a time.
"""
from __future__ import annotations

import csv
import gzip
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..errors import DataError, one_line

REPLACEMENT = "\ufffd".encode()  # stands in for each byte that is not UTF-8
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".csv.gz": ",", ".tsv.gz": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
BLOCK_BYTES = 4 << 20  # CSV bytes parsed at a time (whole lines; more when one line is longer)
PARQUET_BATCH = 200_000  # Parquet rows parsed at a time
_BLOCK = 1 << 20  # pyarrow's default read block; raised to fit the longest line when a line is longer


class MissingColumnError(DataError):
    """A column the schema names is not in an input file."""


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    for s in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
        if name.endswith(s):
            return s
    raise DataError(f"{path}: unsupported input type; expected one of "
                    f"{sorted((*CSV_SUFFIXES, *PARQUET_SUFFIXES))}")


@dataclass
class Raw:
    """One block of an input file as read: the used columns, and where each table row came from."""
    path: Path
    table: pa.Table
    rownum: np.ndarray  # 1-based data row of each table row within the file (CSV: line = row + 1)
    is_csv: bool
    lines: int  # data rows in the block: CSV lines (counted from the bytes), Parquet rows
    malformed: list = field(default_factory=list)  # (row, line, text, expected, actual) of unparsable CSV rows
    not_utf8: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # (line, byte, offset)

    def where(self, k: int) -> str:
        return where(self.path, self.is_csv, int(self.rownum[k]))


def where(path: Path, is_csv: bool, row: int) -> str:
    """A data row of an input, as messages name it (a CSV row's line is one more: the header is line 1)."""
    return f"{path}: row {row} (line {row + 1})" if is_csv else f"{path}: row {row}"


def read_blocks(path: Path, columns: list[str], needed_by: dict[str, str]) -> Iterator[Raw]:
    """The blocks of one input file, in file order (at least one, possibly empty). needed_by: column -> what the
    schema calls it, for the message when it is missing."""
    suffix = suffix_of(path)
    if suffix in PARQUET_SUFFIXES:
        yield from _parquet_blocks(path, columns, needed_by)
    else:
        yield from _csv_blocks(path, CSV_SUFFIXES[suffix], columns, needed_by, BLOCK_BYTES)


def _parquet_blocks(path: Path, columns: list[str], needed_by: dict[str, str]) -> Iterator[Raw]:
    try:
        f = pq.ParquetFile(path)
        names = f.schema_arrow.names
    except pa.ArrowException as e:  # any pyarrow failure: say which file
        raise DataError(f"{path}: cannot read as Parquet: {one_line(e)}") from e
    _check_columns(path, names, columns, needed_by)
    start = 0
    batches = f.iter_batches(batch_size=PARQUET_BATCH, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except pa.ArrowException as e:
            raise DataError(f"{path}: cannot read as Parquet: {one_line(e)}") from e
        if batch is None and start > 0:
            return
        table = pa.Table.from_batches([batch]) if batch is not None else \
            f.schema_arrow.empty_table().select(columns)
        yield Raw(path, table, np.arange(start + 1, start + table.num_rows + 1), is_csv=False, lines=table.num_rows)
        if batch is None:
            return
        start += table.num_rows


# CSV


def _read_some(path: Path, f: BinaryIO, n: int) -> bytes:
    try:
        return f.read(n)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({one_line(e)}); check or re-compress it") from e


def _csv_blocks(path: Path, delimiter: str, columns: list[str], needed_by: dict[str, str],
                block_bytes: int) -> Iterator[Raw]:
    """Whole lines at a time: each block is parsed as the header line followed by its lines."""
    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as f:
        buf = _read_some(path, f, block_bytes)
        if buf.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not data
            buf = buf[3:]
        while not re.search(rb"\r|\n", buf) and (more := _read_some(path, f, block_bytes)):
            buf += more
        _check_columns(path, _csv_header(path, buf, delimiter), columns, needed_by)
        m = re.search(rb"\r\n|\r|\n", buf)
        head, buf = (buf[:m.start()], buf[m.end():]) if m else (buf, b"")
        offset, eof, want, first = 0, False, block_bytes, True  # offset: data lines before this block
        while True:
            while not eof and len(buf) < want:
                more = _read_some(path, f, block_bytes)
                eof, buf = not more, buf + more
            cut = len(buf) if eof else buf.rfind(b"\n") + 1
            if cut == 0 and not eof:  # no line ends within the block: read on until one does
                want = len(buf) + block_bytes
                continue
            if cut or first:
                raw = _read_csv_block(path, head + b"\n" + buf[:cut], delimiter, columns, offset)
                offset += raw.lines
                yield raw
            buf, want, first = buf[cut:], block_bytes, False
            if eof:
                return


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


def _quote_error(path: Path, data: bytes, delimiter: str, offset: int = 0) -> DataError | None:
    """The first line that opens a quoted value it does not close, as a DataError (None when there is none).
    A loop over the lines holding a quote, run only once the line count shows a problem."""
    if b'"' not in data:
        return None
    starts, ends = _line_bounds(data)
    quotes = np.flatnonzero(np.frombuffer(data, np.uint8) == ord('"'))
    for ln in np.unique(np.searchsorted(starts, quotes, side="right")).tolist():
        err = _unclosed_quote(path, ln + offset if ln > 1 else 1, data[starts[ln - 1]:ends[ln - 1]], delimiter)
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


def _block_for(path: Path, data: bytes, offset: int) -> int:
    """A read block that holds the longest line (pyarrow needs every row inside one block)."""
    starts, ends = _line_bounds(data)
    lengths = ends - starts
    longest = int(lengths.max()) if len(lengths) else 0
    if longest > (1 << 29):
        ln = int(np.argmax(lengths)) + 1
        ln += offset if ln > 1 else 0
        raise DataError(f"{path}: line {ln} is {longest:,} bytes long, more than the {1 << 29:,} a row may have; "
                        f"check the file (a missing line break?)")
    return max(_BLOCK, 2 * longest + 1024)



def _read_csv_block(path: Path, data: bytes, delimiter: str, columns: list[str], offset: int) -> Raw:
    """Parse `data` (the header line, then lines offset+1.. of the file's data lines)."""
    lines = max(_count_lines(data) - 1, 0)

    # Bytes that are not UTF-8 spoil only their row, and only when a column the schema reads holds them: note (line,
    # byte, offset) and replace each by U+FFFD (never a delimiter, quote or line break, so the rows stay as they
    # are) for the reader, which would stop at them; the row checks flag the rows whose used values hold U+FFFD.
    not_utf8 = np.zeros((0, 3), np.int64)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        b = np.frombuffer(data, np.uint8)
        pos = _invalid_utf8(b)
        starts, _ = _line_bounds(data)
        ln = np.searchsorted(starts, pos, side="right")
        first = np.unique(ln, return_index=True)[1]  # the first bad byte of each line
        not_utf8 = np.stack([ln[first] + offset, b[pos[first]], pos[first] - starts[ln[first] - 1] + 1],
                            1).astype(np.int64)
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
                block = _block_for(path, data, offset)
                continue
            err = _quote_error(path, data, delimiter, offset)
            raise (err or DataError(f"{path}: cannot read as CSV: {one_line(e)}")) from e

    seen = table.num_rows + len(bad)
    if seen != lines:  # a quoted value took in line breaks: name where it opened
        err = _quote_error(path, data, delimiter, offset)
        if err is None:
            raise RuntimeError(f"{path}: {lines} data lines but the CSV reader returned {seen} rows, and no quoted "
                               f"value spans lines: a bug in ctrscale's line accounting")
        raise err
    if lines:  # an unclosed quote on the last line joins nothing, yet is one
        err = _unclosed_quote(path, lines + 1 + offset, _last_line(data), delimiter)
        if err is not None:
            raise err
    malformed = sorted((line - 1 + offset, line + offset, text, exp, act) for line, text, exp, act in bad)
    m = np.array([r for r, *_ in malformed], np.int64)
    k1 = np.arange(1, table.num_rows + 1) + offset
    rownum = k1 + np.searchsorted(m - np.arange(len(m)), k1, side="right")  # skip the malformed rows' numbers
    return Raw(path, table, rownum, is_csv=True, lines=lines, malformed=malformed, not_utf8=not_utf8)


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

