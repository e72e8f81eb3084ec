"""Generic schema-driven preparer: any CSV/TSV/Parquet table described by a feature schema (ctrscale.schema).

One input row = one impression. The schema names the columns:

- every field's source column (categorical values are kept as raw strings and vocab-encoded by the writer;
  numeric values must parse as finite floats),
- the label (0/1), the impression time (unix seconds, a positive integer), the user key and optionally the request
  key (without one, a request = the impressions of one user at one moment),
- for the behavior sequence: one column per behavior field plus the behavior-time column, each a `sep`-separated
  string, oldest first, the empty string being an empty history. Parquet may hold these as list columns instead.

Each row carries its own history. The behavior log is the concatenation of the rows' sequences, kept exactly as the
file gives them (nothing truncated: `max_len` applies at load time); histories with behaviors at or after their
impression's time, or not sorted oldest first, are counted in the report's `history_checks` and shown as warnings
in report.md (as are splits that are empty or hold a single label). Rows are stored ordered by
(time, user, input row index). The split is either by position in that order (80/10/10, `split="time"`), read from
a column holding train/valid/test, or given per input file (pre-split inputs: `{"train": [...], "valid": [...],
"test": [...]}`, each row tagged with its file's split, then handled as if read from a split column).

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
cannot read at all. Lines longer than pyarrow's read block are read with a block sized to the longest line.

Times: the impression time and the behavior times are integers in `time_unit` (s by default; ms, us, ns), stored
as unix seconds (rounded down); Parquet timestamp columns carry their own unit. A time outside 1980-01-01 ..
2100-01-01 is a bad row whose message suggests the unit that would fit (milliseconds read as seconds would be the
year ~55000). The report says which unit was assumed (`time_unit`).

Content: when the schema declares a content table, `content_path` (or else `schema.content.path`, resolved against
the first input's directory when relative) is a .npy [rows, dim] indexed by the raw integer value of the content
key. `prepare_from_schema_file` resolves a relative `schema.content.path` against the schema file's directory.

Memory is flat in the row count (it grows with the distinct strings only): inputs are read a block at a time
(table_reader); the good rows of each block are kept compact on disk beside `out` (strings as codes; the distinct
strings stay in memory); their sort keys are sorted RUN_ROWS at a time into runs on disk and the runs merged in
bounded slices into the stored order, also on disk; the rows are then fed in that order to the two-pass writer
(prepare.write_chunks), CHUNK_ROWS rows at a time, request ids and splits computed chunk by chunk.
Modules: table_reader (bytes, lines, blocks), row_checks (the checks above), this one (order, split, writing).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError, one_line
from ..schema import Schema, load_schema
from .prepare import Chunk, time_split, write_chunks
from .row_checks import SPLIT_CODES, Part, np_bool, np_str, parse_block, short
from .store import TIME_UNITS, ColumnWriter, check_inputs_outside, check_output, fingerprint, is_prepared, \
    read_columns, spill_folder
from .table_reader import MissingColumnError, read_blocks, suffix_of, where

__all__ = ["BadRowError", "MissingColumnError", "inputs_by_split", "prepare_table", "prepare_from_schema_file"]

VERSION = 2  # 2: line accounting, UTF-8 per row, time range and unit
RESERVED = ("label", "time", "user", "request")  # keys of the writer's rows/log dicts
CHUNK_ROWS = 1 << 16  # rows handed to the writer at a time
RUN_ROWS = 1 << 19    # sort keys sorted in memory at a time, each sorted run then kept on disk
MERGE_ROWS = 1 << 19  # sort keys buffered over all runs while merging them
KEYS = ("time", "user", "row")  # the stored order: impression time, user (rank of its value), input row
_HINT = ("; fix the row, or prepare with --on-bad-row skip (on_bad_row='skip') to drop such rows and count them "
         "in the report")


class BadRowError(DataError):
    """A malformed input row, named by file, row, field and value."""


def inputs_by_split(items: list[str]) -> list[Path] | dict[str, list[Path]]:
    """`--input` items as prepare_table takes them: plain paths, or, when every item reads `split=path` (split one
    of train, valid, test; a split may take several files), the files of each split. An item that names an
    existing file is a plain path even if it holds '='."""
    tagged: dict[str, list[Path]] = {}
    plain: list[str] = []
    for item in items:
        name, eq, path = item.partition("=")
        if eq and name in SPLIT_CODES and not Path(item).is_file():
            if not path:
                raise DataError(f"--input {item!r}: no file after '='; write {name}=PATH")
            tagged.setdefault(name, []).append(Path(path))
        elif eq and not Path(item).exists():
            raise DataError(f"--input {item!r}: no such file; to name a split write train=PATH, valid=PATH or "
                            f"test=PATH")
        else:
            plain.append(item)
    if tagged and plain:
        first = next(i for i in items if i not in plain)
        raise DataError(f"--input mixes {plain[0]!r}, a plain path, with {first!r}, a file named by its split; name "
                        f"the split of every input (train=, valid=, test=), or give only plain paths and --split")
    return tagged or [Path(p) for p in plain]


def _split_files(inputs: dict) -> tuple[list[Path], list[int]]:
    """Pre-split inputs {split: path or paths} -> (paths in train, valid, test order; each one's split code)."""
    unknown = sorted(set(inputs) - set(SPLIT_CODES))
    if unknown:
        raise DataError(f"inputs by split: unknown split(s) {unknown}; expected {', '.join(SPLIT_CODES)}")
    files = {s: [Path(p) for p in ([v] if isinstance(v, (str, Path)) else v)]
             for s in SPLIT_CODES if (v := inputs.get(s))}
    # Every split needs its own file: a run picks its best epoch on valid and scores test, and carving one split
    # out of another would be a second, silent split rule. (A file whose rows are all skipped still leaves an
    # empty split, which the report warns about.)
    missing = [s for s in SPLIT_CODES if s not in files]
    if missing:
        raise DataError(f"inputs by split: no {' or '.join(missing)} file; give "
                        f"{' '.join(f'{s}=PATH' for s in missing)} too (every split needs rows), or give plain paths "
                        f"to split by time or by a column")
    seen: dict[Path, str] = {}
    for s, paths in files.items():
        for p in paths:
            if p.resolve() in seen:
                raise DataError(f"inputs by split: {p} is given twice ({seen[p.resolve()]} and {s}); give each "
                                f"file once")
            seen[p.resolve()] = s
    return [p for ps in files.values() for p in ps], [SPLIT_CODES[s] for s, ps in files.items() for _ in ps]


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


class _Spill:
    """The good rows of every block in input order, compact on disk: each string column as codes into the distinct
    values seen (kept in memory), each behavior as one row of `elements`."""

    def __init__(self, folder: Path, schema: Schema):
        self.folder = folder
        self.schema = schema
        self.seq = schema.sequences[0] if schema.sequences else None
        self.rows = ColumnWriter(folder / "rows")
        self.elements = ColumnWriter(folder / "elements")
        self.strings: dict[str, dict[str, int]] = {}  # column -> distinct value -> code (in order of appearance)
        self.files: list[tuple[Path, bool]] = []  # (path, is_csv) of each input, for messages
        self.late = self.unsorted = 0  # rows with behaviors not before the impression / not oldest first
        self.n_elements = 0

    def _codes(self, column: str, values: pa.Array) -> np.ndarray:
        seen = self.strings.setdefault(column, {})
        enc = pc.dictionary_encode(values)
        distinct = enc.dictionary.to_pylist()
        codes = np.fromiter((seen.setdefault(s, len(seen)) for s in distinct), np.int64, len(distinct))
        return codes[enc.indices.to_numpy(zero_copy_only=False)]

    def add(self, part: Part) -> None:
        raw, schema = part.raw, self.schema
        if not self.files or self.files[-1][0] != raw.path:
            self.files.append((raw.path, raw.is_csv))
        k = np.flatnonzero(part.reason < 0)
        if not len(k):
            return
        rows = pa.array(k)
        cols = {"time": part.time[k], "user": self._codes("user", part.user.take(rows)), "label": part.label[k],
                "file": np.full(len(k), len(self.files) - 1, np.int32), "rownum": raw.rownum[k].astype(np.int64)}
        if part.request is not None:
            cols["request"] = self._codes("request", part.request.take(rows))
        if part.split is not None:
            cols["split"] = part.split[k]
        cols.update({f"num.{f.name}": part.num[f.name][k] for f in schema.numeric})
        cols.update({f"cat.{f.name}": self._codes(f"cat.{f.name}", part.cat[f.name].take(rows))
                     for f in schema.categorical})
        if self.seq is not None:
            new_lens = part.seq["time"].lens[k]  # equal for every behavior field on a good row
            new_end = np.cumsum(new_lens)
            to_new = np.arange(int(new_end[-1])) - np.repeat(new_end - new_lens, new_lens)

            def kept(name: str):  # the good rows' behaviors of one field (a bad row's fields may differ in length)
                lens = part.seq[name].lens
                at = np.repeat((np.cumsum(lens) - lens)[k], new_lens) + to_new
                values = part.seq[name].values
                return values[at] if isinstance(values, np.ndarray) else values.take(pa.array(at))

            etime = kept("time")
            self.elements.append(time=etime, **{f.name: self._codes(f"hist.{f.name}", kept(f.name))
                                                for f in self.seq.fields})
            cols["lens"] = new_lens
            cols["estart"] = self.n_elements + new_end - new_lens  # where the row's behaviors start in `elements`
            self.n_elements += int(new_end[-1])
            # The file declares the histories; flag (never alter) those that look leaky or out of order.
            row_of = np.repeat(np.arange(len(k)), new_lens)
            self.late += int((np.bincount(row_of[etime >= cols["time"][row_of]], minlength=len(k)) > 0).sum())
            same_row = row_of[1:] == row_of[:-1]
            self.unsorted += int((np.bincount(row_of[1:][same_row & (etime[1:] < etime[:-1])],
                                              minlength=len(k)) > 0).sum())
        self.rows.append(**cols)

    def close(self) -> None:
        self.rows.close()
        self.elements.close()

    def decoder(self, column: str) -> pa.Array:
        return pa.array(list(self.strings.get(column, {})), pa.large_string())

    def ranks(self, column: str) -> np.ndarray:
        """code -> rank of its value among the distinct values, sorted (as np.unique orders them)."""
        values = list(self.strings[column])
        rank = np.empty(len(values), np.int64)
        rank[sorted(range(len(values)), key=values.__getitem__)] = np.arange(len(values))
        return rank

    def where(self, g: int) -> str:
        """Where row `g` (input order) came from: file, row (and line)."""
        cols = read_columns(self.rows.dir)
        path, is_csv = self.files[int(cols["file"][g])]
        return where(path, is_csv, int(cols["rownum"][g]))


def prepare_table(schema: Schema, inputs: list[str | Path] | dict, out: str | Path, on_bad_row: str = "error",
                  split: str | None = None, force: bool = False, content_path: str | Path | None = None,
                  time_unit: str = "s") -> dict | None:
    """Prepare CSV/TSV/Parquet files described by `schema` into `out`; returns the report, or None when `out` is
    already prepared from the same schema, options and input files (pass force=True to redo it).

    inputs: a list of files, read one after the other; or pre-split files {"train": paths, "valid": paths,
    "test": paths} (every split at least one file; no `split` then). split (for a list): "time", the default (rows
    ordered by (time, user, row index), first 80% train, next 10% valid, last 10% test) or the name of a column
    holding train/valid/test. on_bad_row: "error" (raise BadRowError) or "skip" (drop and count).
    time_unit: unit of the impression and behavior times in text or integer columns (s, ms, us, ns); stored as
    unix seconds (rounded down).
    """
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if split is not None and not split:
        raise DataError("split must be 'time' or the name of a column holding train/valid/test")
    if time_unit not in TIME_UNITS:
        raise DataError(f"time_unit must be one of {', '.join(TIME_UNITS)}, got {time_unit!r}")
    file_splits = None  # each input's split code, for pre-split inputs
    if isinstance(inputs, dict):
        if split is not None:
            raise DataError(f"--split {split} (split={split!r}) and inputs named by split (train=PATH ...) both say "
                            f"which split a row goes to; drop --split, or give the inputs as plain paths")
        inputs, file_splits = _split_files(inputs)
        split = "files"
    else:
        inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
        split = split or "time"
    if not inputs:
        raise DataError("no input files")
    for p in inputs:
        suffix_of(p)
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
    split_col = None if split == "time" or file_splits else split

    def named(p: Path, k: int) -> str:  # input k as the fingerprint and the report name it (split=path if pre-split)
        return f"{list(SPLIT_CODES)[file_splits[k]]}={p}" if file_splits else str(p)

    fp = fingerprint("generic", VERSION, schema.to_dict(),
                     {"on_bad_row": on_bad_row, "split": split,
                      "inputs": [named(p.resolve(), k) for k, p in enumerate(inputs)],
                      "content": str(cpath.resolve()) if cpath else None, "time_unit": time_unit},
                     files=inputs + ([cpath] if cpath else []))
    if not force and is_prepared(out, fp):
        return None
    check_output(out)  # refuse a folder we may not replace now, not after reading every input

    final = Path(os.path.abspath(out))
    final.parent.mkdir(parents=True, exist_ok=True)
    with spill_folder(final) as folder:
        spill = _Spill(folder, schema)
        bad_rows, rows_read, lines_read = _read_inputs(schema, inputs, split_col, file_splits, time_unit,
                                                       on_bad_row, spill)
        spill.close()
        return _write(schema, spill, out, fp, cpath, split != "time", bad_rows, rows_read,
                      extra={"inputs": [named(p, k) for k, p in enumerate(inputs)], "on_bad_row": on_bad_row,
                             "split_mode": split, "time_unit": time_unit, "lines_read": lines_read})


def _read_inputs(schema, inputs, split_col, file_splits, time_unit, on_bad_row,
                 spill) -> tuple[dict[str, int], int, int]:
    """Read, check and spill every block of every input; (bad rows by reason, rows read, CSV lines read).
    file_splits: each input's split code (pre-split inputs), else None."""
    cols = _columns(schema, split_col)
    bad_rows: dict[str, int] = {}
    rows_read = lines_read = 0
    for k, path in enumerate(inputs):
        for raw in read_blocks(path, list(cols), cols):
            rows_read += raw.lines
            lines_read += raw.lines if raw.is_csv else 0
            try:
                part, checks = parse_block(raw, schema, split_col, time_unit)
            except pa.ArrowException as e:  # a column of a type no check can read (e.g. a struct in Parquet)
                raise DataError(f"{path}: cannot read the schema's columns: {one_line(e)}") from e
            if file_splits is not None:  # the file's split, as a split column would have given it
                part.split = np.full(part.n, file_splits[k], np.int8)
            bad = np.flatnonzero(part.reason >= 0)
            if on_bad_row == "error" and (raw.malformed or len(bad)):  # the earliest bad row of the file
                first = []
                if raw.malformed:
                    r, line, text, exp, act = raw.malformed[0]
                    first.append((r, f"{path}: row {r} (line {line}): malformed row: expected {exp} columns, got "
                                     f"{act}: {short(text)}"))
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
            spill.add(part)
    written = spill.rows.rows
    if written + sum(bad_rows.values()) != rows_read:  # every row of every file is written or counted as skipped
        raise RuntimeError(f"bug: {rows_read} rows read but {written} written and {bad_rows} skipped")
    if not written:
        raise DataError(f"no rows left to prepare from {[str(p) for p in inputs]} "
                        f"(read {rows_read}, skipped {bad_rows}); check the schema against the files")
    return bad_rows, rows_read, lines_read


def _write(schema, spill: _Spill, out, fp, cpath, split_by_row: bool, bad_rows, rows_read, extra) -> dict:
    """Order, split and number the spilled rows, then hand them to the writer in stored order. split_by_row: each
    row's split was spilled (a split column or pre-split inputs); else the split is by position (time)."""
    n = spill.rows.rows
    stored = _stored_order(spill)
    seq = spill.seq
    if seq is not None:
        extra["history_checks"] = {"rows_with_behaviors_not_before_impression": spill.late,
                                   "rows_with_unsorted_history": spill.unsorted}
    content = None
    if cpath is not None:
        content = _load_content(schema, cpath, spill, stored)
        uniq = np.array(list(spill.strings[f"cat.{schema.content.key}"])).astype(np.int64)
        extra["content"] = {"path": str(cpath), "rows": int(content.shape[0]),
                            "keys_without_vector": int((uniq >= content.shape[0]).sum())}
    extra["rows_read"] = rows_read
    extra["rows_written"] = n

    decode = {c: spill.decoder(c) for c in spill.strings if c.startswith(("cat.", "hist."))}
    request_rank = spill.ranks("request") if schema.request_key else None
    pairs = None if schema.request_key else _pairs_per_user(stored, n, len(spill.strings["user"]))

    def chunks():
        """The rows in stored order, CHUNK_ROWS at a time, read back from the spill (fresh maps per chunk, so
        the pages read are let go with them)."""
        requests = _RequestIds(pairs) if pairs is not None else None  # numbers requests as the chunks come
        for a in range(0, n, CHUNK_ROWS):
            keys = _stored_slice(stored, a, a + CHUNK_ROWS)
            idx, time, user = keys["row"], keys["time"], keys["user"]
            cols = read_columns(spill.rows.dir)
            r = {f.name: np_str(decode[f"cat.{f.name}"].take(cols[f"cat.{f.name}"][idx])) for f in schema.categorical}
            r.update({f.name: np.asarray(cols[f"num.{f.name}"][idx]) for f in schema.numeric})
            request = request_rank[cols["request"][idx]] if request_rank is not None else requests(time, user)
            r.update(label=np.asarray(cols["label"][idx]).astype(np.float32), time=time, user=user, request=request)
            split = cols["split"][idx].astype(np.int8) if split_by_row else time_split(n, start=a, stop=a + len(idx))
            log: dict[str, np.ndarray] = {}
            end = start = np.zeros(len(idx), np.int64)
            if seq is not None:
                lens = np.asarray(cols["lens"][idx]).astype(np.int64)
                end = np.cumsum(lens)
                start = end - lens
                e = np.repeat(cols["estart"][idx] - start, lens) + np.arange(int(end[-1]) if len(idx) else 0)
                ecols = read_columns(spill.elements.dir)
                log = {"time": np.asarray(ecols["time"][e])}
                log.update({f.name: np_str(decode[f"hist.{f.name}"].take(ecols[f.name][e])) for f in seq.fields})
            yield Chunk(rows=r, split=split, log=log, hist_start=start, hist_end=end)

    return write_chunks(out, schema=schema, fp=fp, chunks=chunks, content_raw=content, bad_rows=bad_rows,
                        extra=extra)


def _stored_slice(folder: Path, a: int, b: int, names=KEYS) -> dict[str, np.ndarray]:
    """Rows [a, b) of the columns `names` in `folder`, copied (the map, and the pages it read, go with this
    call)."""
    cols = read_columns(folder)
    return {k: np.array(cols[k][a:b]) for k in names}


def _stored_order(spill: _Spill) -> Path:
    """Sort the spilled rows' keys (KEYS) on disk: runs of RUN_ROWS rows sorted in memory, then merged. Returns
    the folder of the keys in stored order (column 'row' is the stored order itself)."""
    runs = _sorted_runs(spill)
    out = ColumnWriter(spill.folder / "stored")
    _merge(runs, out)
    out.close()
    return out.dir


def _sorted_runs(spill: _Spill) -> list[Path]:
    rank = spill.ranks("user")  # users sort by value, as np.unique orders them
    runs = []
    for a in range(0, spill.rows.rows, RUN_ROWS):
        cols = _stored_slice(spill.rows.dir, a, a + RUN_ROWS, ("time", "user"))
        keys = {"time": cols["time"], "user": rank[cols["user"]], "row": np.arange(a, a + len(cols["time"]))}
        order = np.lexsort([keys[k] for k in reversed(KEYS)])
        run = ColumnWriter(spill.folder / f"run-{len(runs):05d}")
        run.append(**{k: v[order] for k, v in keys.items()})
        run.close()
        runs.append(run.dir)
    return runs


class _Run:
    """A sorted run on disk, read into a buffer of at most `size` rows at a time."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size, self.pos = folder, size, 0
        self.rows = len(read_columns(folder)["row"])
        self.buf = {k: np.zeros(0, np.int64) for k in KEYS}

    def fill(self) -> None:
        got = _stored_slice(self.folder, self.pos, self.pos + self.size - len(self.buf["row"]))
        self.pos += len(got["row"])
        self.buf = {k: np.concatenate([self.buf[k], got[k]]) for k in KEYS}

    def more(self) -> bool:
        """Rows left on disk beyond the buffer."""
        return self.pos < self.rows

    def last(self) -> tuple:
        return tuple(int(self.buf[k][-1]) for k in KEYS)

    def take(self, upto: tuple | None) -> dict[str, np.ndarray]:
        """Remove and return the buffered rows whose keys are <= `upto` (a prefix: the buffer is sorted)."""
        t, u, g = (self.buf[k] for k in KEYS)
        if upto is None:
            cut = len(g)
        else:
            T, U, G = upto
            cut = int(((t < T) | ((t == T) & ((u < U) | ((u == U) & (g <= G))))).sum())
        got = {k: v[:cut] for k, v in self.buf.items()}
        self.buf = {k: v[cut:] for k, v in self.buf.items()}
        return got


def _merge(runs: list[Path], out: ColumnWriter) -> None:
    """k-way merge of sorted runs into `out`, a bounded slice at a time."""
    runs = [_Run(r, max(MERGE_ROWS // len(runs), 1)) for r in runs]
    while True:
        for r in runs:
            r.fill()
        runs = [r for r in runs if len(r.buf["row"])]
        if not runs:
            return
        # A run's rows still on disk sort after its last buffered row, so every buffered row up to the smallest
        # such last row is final (keys are unique: the input row breaks ties).
        upto = min((r.last() for r in runs if r.more()), default=None)
        parts = [r.take(upto) for r in runs]
        merged = {k: np.concatenate([p[k] for p in parts]) for k in KEYS}
        order = np.lexsort([merged[k] for k in reversed(KEYS)])
        out.append(**{k: v[order] for k, v in merged.items()})


def _new_pairs(time: np.ndarray, user: np.ndarray, prev: tuple | None) -> np.ndarray:
    """Mask of the rows (in stored order) that start a (time, user) pair; prev: the pair before the first row."""
    new = np.ones(len(time), bool)
    new[1:] = (time[1:] != time[:-1]) | (user[1:] != user[:-1])
    if prev is not None and len(time):
        new[0] = (int(time[0]), int(user[0])) != prev
    return new


def _pairs_per_user(stored: Path, n: int, n_users: int) -> np.ndarray:
    """Distinct (time, user) pairs of each user (by rank), counted over the stored order."""
    counts, prev = np.zeros(n_users, np.int64), None
    for a in range(0, n, CHUNK_ROWS):
        keys = _stored_slice(stored, a, a + CHUNK_ROWS)
        new = _new_pairs(keys["time"], keys["user"], prev)
        counts += np.bincount(keys["user"][new], minlength=n_users)
        prev = (int(keys["time"][-1]), int(keys["user"][-1]))
    return counts


class _RequestIds:
    """prepare.request_ids over the stored order, one chunk after another: ids number the (user, time) pairs
    sorted by user then time. A user's pairs come in time order (the stored order is by time), so a pair's id is
    its user's first id plus how many of the user's pairs came before it."""

    def __init__(self, pairs_per_user: np.ndarray):
        self.first = np.cumsum(pairs_per_user) - pairs_per_user
        self.seen = np.zeros(len(pairs_per_user), np.int64)
        self.prev, self.last = None, -1  # the pair and id of the previous chunk's last row

    def __call__(self, time: np.ndarray, user: np.ndarray) -> np.ndarray:
        new = _new_pairs(time, user, self.prev)
        u = user[new]
        by_user = np.argsort(u, kind="stable")
        su = u[by_user]
        starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
        earlier = np.empty(len(u), np.int64)  # the user's pairs earlier in this chunk
        earlier[by_user] = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))
        ids = self.first[u] + self.seen[u] + earlier
        self.seen += np.bincount(u, minlength=len(self.seen))
        out = np.r_[self.last, ids][np.cumsum(new)]  # a row takes the id of its pair's first row
        if len(time):
            self.prev, self.last = (int(time[-1]), int(user[-1])), int(out[-1])
        return out


def _load_content(schema: Schema, cpath: Path, spill: _Spill, stored: Path) -> np.ndarray:
    try:
        table = np.load(cpath, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # not a .npy array (a pickle, text, a truncated file)
        raise DataError(f"content table {cpath}: not a readable .npy array ({one_line(e)})") from e
    if table.ndim != 2 or table.shape[1] != schema.content.dim:
        raise DataError(f"content table {cpath}: shape {table.shape}, expected [rows, {schema.content.dim}] "
                        f"(schema content.dim)")
    key = schema.content.key
    values = spill.strings[f"cat.{key}"]
    uniq = sorted(values)
    ok = np_bool(pc.match_substring_regex(pa.array(uniq, pa.string()), r"^[0-9]{1,18}$"))
    if not ok.all():
        badv = uniq[int(np.argmin(ok))]
        g = _first_stored(spill, stored, f"cat.{key}", values[badv])
        raise DataError(f"{spill.where(g)}: field {key!r}: the content table {cpath} is "
                        f"indexed by the raw integer value of {key!r}, got {short(str(badv))} "
                        f"({int((~ok).sum())} distinct non-integer value(s))")
    return table


def _first_stored(spill: _Spill, stored: Path, column: str, code: int) -> int:
    """The input row of the first row in stored order whose `column` holds `code`."""
    for a in range(0, spill.rows.rows, CHUNK_ROWS):
        rows = _stored_slice(stored, a, a + CHUNK_ROWS)["row"]
        hit = np.flatnonzero(read_columns(spill.rows.dir)[column][rows] == code)
        if len(hit):
            return int(rows[hit[0]])
    raise RuntimeError(f"bug: no row holds code {code} of {column}")


def prepare_from_schema_file(schema_path: str | Path, inputs: list[str | Path] | dict, out: str | Path,
                             on_bad_row: str = "error", split: str | None = None, force: bool = False,
                             content_path: str | Path | None = None, time_unit: str = "s") -> dict | None:
    """Load a schema YAML and prepare `inputs` (a list of files, or pre-split {split: files}: see prepare_table)
    with it. A relative content.path is resolved against the schema file's directory (unless `content_path` is
    given)."""
    schema_path = Path(schema_path)
    schema = load_schema(schema_path)
    if content_path is None and schema.content is not None and not Path(schema.content.path).is_absolute():
        content_path = schema_path.parent / schema.content.path
    return prepare_table(schema, inputs, out, on_bad_row=on_bad_row, split=split, force=force,
                         content_path=content_path, time_unit=time_unit)
