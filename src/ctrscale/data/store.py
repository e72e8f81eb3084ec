"""The prepared-dataset layout: vocabularies, a behavior log and columnar shards of impressions.

    <root>/.ctrscale-prepared    the marker: this folder was made by ctrscale and may be replaced by it
    <root>/meta.json             written last: its presence marks a finished preparation
    <root>/report.json|.md       rows per split, bad rows by reason, vocab sizes, history-length histogram
    <root>/vocab/<name>.json     raw values by id (0 = pad, 1 = OOV)
    <root>/content.npy           content vectors re-indexed by item id (optional)
    <root>/log/                  behavior log: ids [E, F_hist] and unix seconds [E]
    <root>/<split>/shard-NNNNN/  sparse [N, F_sparse] ids, dense [N, F_dense], label, time, user, request,
                                 hist_start, hist_end (the impression's history is log[hist_start:hist_end])

Histories are stored once in the log and referenced by [start, end) ranges, so one preparation serves every
max_len (sweeps over history length need that) and a user's shared history is not copied per impression.
Columns are raw little-endian binaries with dtype and shape in columns.json, so they can be written as a stream
and read back as memory maps.

A user's files are never deleted. An existing output folder is replaced only when it carries the marker and holds
nothing but what a preparation writes there (`_OURS`); any other non-empty folder is refused with a DataError. A
preparation is written into the hidden sibling `.<root>.ctrscale-partial-<pid>-<token>` (marked) and swapped in only
once complete (the old folder is renamed to `.<root>.ctrscale-old-<pid>-<token>`, the new one renamed in, then the
old one deleted), so a failed or
interrupted preparation leaves the previous one intact. Leftovers of dead processes are cleaned up (or, when a swap
was cut between its two renames, the old folder restored) by the next preparation or `is_prepared` check.

Times are unix seconds; every impression and behavior time must lie in [TIME_MIN, TIME_MAX) = [1980-01-01,
2100-01-01), so milliseconds (or a wrong unit) read as seconds are refused instead of silently stored.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..reports import markdown_table

PAD, OOV = 0, 1
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
MARKER = ".ctrscale-prepared"
TIME_MIN = 315_532_800      # 1980-01-01 00:00 UTC: older "unix seconds" are almost surely another unit or offset
TIME_MAX = 4_102_444_800    # 2100-01-01 00:00 UTC: milliseconds read as seconds land near the year 55000
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}  # per second
TIME_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
TIME_RANGE = "1980-01-01 .. 2100-01-01 (unix seconds 315532800 .. 4102444799)"
# Paths (relative, '/'-separated) a preparation writes in its folder; anything else there is the user's.
# gsu/ holds the candidate-sequence caches that training writes beside the data (data/gsu.py).
_OURS = re.compile(r"\.ctrscale-prepared|meta\.json|report\.json|report\.md|content\.npy|[^/]*\.tmp"
                   r"|vocab(/[^/]+\.(json|tmp))?|log(/[^/]+\.(bin|json|tmp))?"
                   r"|(train|valid|test)(/shard-\d+(/[^/]+\.(bin|json|tmp))?)?"
                   r"|gsu(/[^/]+(/(train|valid|test)(\.tmp)?\.npy)?)?")


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Vocab:
    """Raw value -> id. Ids 0 (padding) and 1 (out of vocabulary) are reserved; frequent values get small ids."""

    def __init__(self, values: np.ndarray):
        self.values = np.asarray(values)  # raw value of ids 2..
        self._order = np.argsort(self.values, kind="stable")
        self._sorted = self.values[self._order]

    @classmethod
    def fit(cls, raw: np.ndarray | Counter, min_freq: int = 1) -> "Vocab":
        if isinstance(raw, Counter):
            keys = np.array(list(raw.keys()))
            counts = np.array(list(raw.values()), dtype=np.int64)
        else:
            keys, counts = np.unique(np.asarray(raw), return_counts=True)
        keep = counts >= min_freq
        keys, counts = keys[keep], counts[keep]
        order = np.lexsort((keys, -counts))  # by frequency, ties by value: deterministic
        return cls(keys[order])

    def __len__(self) -> int:
        return len(self.values) + 2

    def encode(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        if len(self._sorted) == 0:
            return np.full(raw.shape, OOV, dtype=np.int32)
        if raw.dtype.kind != self._sorted.dtype.kind and not (
                raw.dtype.kind in "iu" and self._sorted.dtype.kind in "iu"):
            raw = raw.astype(self._sorted.dtype)
        pos = np.clip(np.searchsorted(self._sorted, raw), 0, len(self._sorted) - 1)
        found = self._sorted[pos] == raw
        return np.where(found, self._order[pos] + 2, OOV).astype(np.int32)

    def to_json(self) -> str:
        return json.dumps(["<pad>", "<oov>"] + self.values.tolist())

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        return cls(np.array(json.loads(text)[2:]))


class ColumnWriter:
    """Appends rows to named columns (<dir>/<name>.bin) and records dtype/shape in columns.json on close."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, dict] = {}
        self.files = {}

    def append(self, **columns: np.ndarray) -> None:
        for name, arr in columns.items():
            arr = np.ascontiguousarray(arr)
            m = self.meta.get(name)
            if m is None:
                self.meta[name] = {"dtype": arr.dtype.str, "shape": [0, *arr.shape[1:]]}
                self.files[name] = open(self.dir / f"{name}.bin", "wb")
                m = self.meta[name]
            elif list(arr.shape[1:]) != m["shape"][1:] or arr.dtype.str != m["dtype"]:
                raise ValueError(f"column {name}: got {arr.dtype}{arr.shape}, expected {m['dtype']}{m['shape']}")
            self.files[name].write(arr.tobytes())
            m["shape"][0] += len(arr)

    @property
    def rows(self) -> int:
        return next(iter(self.meta.values()))["shape"][0] if self.meta else 0

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        atomic_write_text(self.dir / "columns.json", json.dumps(self.meta, indent=1))


def read_columns(directory: str | Path) -> dict[str, np.ndarray]:
    directory = Path(directory)
    meta = json.loads((directory / "columns.json").read_text())
    out = {}
    for name, m in meta.items():
        shape = tuple(m["shape"])
        if int(np.prod(shape)) == 0:
            out[name] = np.zeros(shape, dtype=np.dtype(m["dtype"]))
        else:
            out[name] = np.memmap(directory / f"{name}.bin", dtype=np.dtype(m["dtype"]), mode="r", shape=shape)
    return out


def fingerprint(*parts, files: list[str | Path] = ()) -> str:
    """Identity of a preparation: its options and its inputs' names and contents. Content, not modification time:
    a fresh copy of the same files (a new checkout, a remounted share) keeps the preparation and lets an interrupted
    run resume; one changed byte prepares again."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f"{Path(f).name}:{content_hash(Path(f))}".encode())
    return h.hexdigest()[:16]


def content_hash(path: Path) -> str:
    st = path.stat()
    return _content_hash(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; once per process while its size and mtime stand (`compare` asks once per run)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def is_prepared(root: str | Path, fp: str) -> bool:
    root = Path(root)
    recover(root)
    meta = root / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("fingerprint") == fp
    except (ValueError, AttributeError):  # a damaged (or foreign) meta.json: not this preparation
        return False


# ----------------------------------------------------------------------------------------------------------------
# The output folder: never delete what is not ours; swap a finished preparation in atomically


def _foreign(folder: Path) -> str | None:
    """The first path in `folder` a preparation does not write (relative), or None when all of it is ours."""
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        for name in sorted(dirnames) + sorted(filenames):
            path = (rel / name).as_posix()
            if not _OURS.fullmatch(path):
                return path
    return None


def _marked(folder: Path) -> bool:
    """Made by a preparation: the marker, or (written before the marker existed) a meta.json of our format."""
    if (folder / MARKER).is_file():
        return True
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"format_version", "fingerprint", "layout", "splits"} <= meta.keys()


def _ours(folder: Path) -> bool:
    """A folder ctrscale marked and that holds nothing else: safe to delete."""
    return folder.is_dir() and not folder.is_symlink() and _marked(folder) and _foreign(folder) is None


def check_output(root: str | Path) -> None:
    """Refuse an output folder that a preparation must not replace: one holding anything ctrscale did not write
    there, or one ctrscale did not mark. A missing or empty folder is fine."""
    root = Path(root)
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; choose another --out")
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return
    if not _marked(root):
        raise DataError(f"{root}: the folder exists and holds files (e.g. {entries[0]!r}) but was not made by "
                        f"`ctrscale data prepare` (no {MARKER} marker); refusing to write into it. Choose another "
                        f"--out (a new or empty folder), or remove the folder yourself")
    foreign = _foreign(root)
    if foreign is not None:
        raise DataError(f"{root}: holds {foreign!r}, which a preparation does not write; refusing to replace the "
                        f"folder. Choose another --out, or move that file out of it (or remove the folder yourself)")


def check_inputs_outside(root: str | Path, inputs) -> None:
    """Refuse input files or folders inside (or equal to) the output folder: replacing it would delete them."""
    out = Path(root).resolve()
    for p in inputs:
        if p is None:
            continue
        r = Path(p).resolve()
        if r == out or out in r.parents:
            raise DataError(f"{p}: the input lies inside the output folder {root}, which a preparation replaces; "
                            f"choose an --out outside the inputs' folders")


def _sibling(root: Path, kind: str) -> Path:
    """A temporary folder beside `root`: hidden, named for ctrscale, this process and a random token."""
    return root.with_name(f".{root.name}.ctrscale-{kind}-{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def spill_folder(root: str | Path):
    """A scratch folder beside `root` for a preparation's intermediate files, removed on exit; one left by a
    killed process is removed by the next `recover`."""
    path = _sibling(Path(os.path.abspath(root)), "spill")
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _siblings(root: Path):
    """(path, kind 'partial' | 'old' | 'spill', pid) of the temporary folders preparations of `root` leave."""
    pat = re.compile(r"\." + re.escape(root.name) + r"\.ctrscale-(partial|old|spill)-(\d+)-[0-9a-f]{8}")
    if not root.parent.is_dir():
        return []
    found = [(p, m.group(1), int(m.group(2))) for p in root.parent.iterdir() if (m := pat.fullmatch(p.name))]
    return sorted(found, key=lambda x: x[0].name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process (or, across PID namespaces, another one with our pid): abort() cleans its own
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def recover(root: str | Path) -> None:
    """Tidy up after preparations of `root` that died: when a swap was cut between its two renames (no `root`,
    an old folder aside), put the old preparation back; delete the other leftovers that are ours. Folders of a
    process still running, and anything not ours, are left alone."""
    root = Path(root)
    for path, kind, pid in _siblings(root):
        if _alive(pid) or (kind != "spill" and not _ours(path)):  # a spill folder holds only scratch files
            continue
        if kind == "old" and not root.exists() and (path / "meta.json").is_file():
            os.rename(path, root)
        else:
            shutil.rmtree(path)


def outside_time_range(seconds: np.ndarray) -> np.ndarray:
    """Mask of times that are not plausible unix seconds (before TIME_MIN or from TIME_MAX on)."""
    seconds = np.asarray(seconds)
    return (seconds < TIME_MIN) | (seconds >= TIME_MAX)


def check_times(times: np.ndarray, what: str) -> None:
    """Every time must be unix seconds in [TIME_MIN, TIME_MAX); `what` names them for the message."""
    t = np.asarray(times)
    bad = outside_time_range(t)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{what}: {int(bad.sum())} time(s) outside {TIME_RANGE}, e.g. {int(t[i])} "
                        f"(position {i}); the raw times are not unix seconds: check their unit")


@dataclass
class Layout:
    """Column names of a prepared dataset, in the order the arrays hold them."""
    sparse: list[str]          # categorical non-behavioral fields
    dense: list[str]           # numeric non-behavioral fields
    hist: list[str]            # behavior fields
    field_vocab: dict[str, str]  # categorical field or behavior field -> vocabulary name
    roles: dict[str, str]        # non-behavioral field -> user | item | context


class DatasetWriter:
    """Streams a preparation to disk: shards per split, the behavior log, vocabularies, then meta.json. Everything
    is written into a hidden sibling (`_sibling`) and swapped into `root` by finish(); a failure on the way removes
    the partial folder and leaves `root` as it was."""

    def __init__(self, root: str | Path, layout: Layout, shard_rows: int = 1_000_000):
        final = Path(os.path.abspath(root))  # "." or "out/" get a name the temporary siblings can extend
        if final.is_symlink():  # replace the folder the link points to, keep the link
            final = final.resolve()
        check_output(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        recover(final)
        self.final = final
        self.root = _sibling(final, "partial")
        self._swapped = False
        self.root.mkdir()
        (self.root / MARKER).touch()
        self.layout = layout
        self.shard_rows = shard_rows
        self.log = ColumnWriter(self.root / "log")
        self._shards: dict[str, list[ColumnWriter]] = {}
        self.stats = {s: {"rows": 0, "positives": 0} for s in SPLITS}
        self._hist_lens: dict[str, Counter] = {s: Counter() for s in SPLITS}  # length -> rows (not per row)

    def abort(self) -> None:
        """Drop the partial preparation (the previous one in `final`, if any, stays)."""
        if self._swapped:
            return
        for w in [self.log, *(w for ws in self._shards.values() for w in ws)]:
            for f in w.files.values():
                f.close()
        if _ours(self.root):
            shutil.rmtree(self.root, ignore_errors=True)

    def _swap_in(self) -> None:
        check_output(self.final)  # again: files may have been put there while we prepared
        old = None
        if self.final.exists():
            old = _sibling(self.final, "old")
            os.rename(self.final, old)
        try:
            os.rename(self.root, self.final)
        except BaseException:
            if old is not None:
                os.rename(old, self.final)
            raise
        self.root, self._swapped = self.final, True
        if old is not None and _ours(old):  # checked again: nothing may have been put there meanwhile
            shutil.rmtree(old, ignore_errors=True)  # what is left is removed by the next recover()

    def append_log(self, ids: np.ndarray, times: np.ndarray) -> int:
        """Append behaviors (ids [E, F_hist] int32, unix seconds [E]); returns the offset of the first one."""
        with self.aborting():
            base = self.log.rows
            if len(ids):
                check_times(times, f"preparing {self.final}: behavior log")
                self.log.append(ids=ids.astype(np.int32), time=times.astype(np.int64))
            return base

    @contextmanager
    def aborting(self):
        """Any failure while writing (a full disk, refused data, an interrupt) drops the partial folder."""
        try:
            yield
        except BaseException:
            self.abort()
            raise

    def append_rows(self, split: str, *, sparse, dense, label, time, user, request, hist_start, hist_end) -> None:
        n = len(label)
        if n == 0:
            return
        with self.aborting():
            check_times(time, f"preparing {self.final}: {split} impressions")
            self._append_rows(split, n, sparse, dense, label, time, user, request, hist_start, hist_end)

    def _append_rows(self, split, n, sparse, dense, label, time, user, request, hist_start, hist_end) -> None:
        lab = np.asarray(label)
        cols = dict(sparse=np.asarray(sparse, np.int32).reshape(n, len(self.layout.sparse)),
                    dense=np.asarray(dense, np.float32).reshape(n, len(self.layout.dense)),
                    label=lab.astype(np.float32), time=np.asarray(time, np.int64),
                    user=np.asarray(user, np.int64), request=np.asarray(request, np.int64),
                    hist_start=np.asarray(hist_start, np.int64), hist_end=np.asarray(hist_end, np.int64))
        shards = self._shards.setdefault(split, [])
        start = 0
        while start < n:
            if not shards or shards[-1].rows >= self.shard_rows:
                if shards:
                    shards[-1].close()
                shards.append(ColumnWriter(self.root / split / f"shard-{len(shards):05d}"))
            take = min(n - start, self.shard_rows - shards[-1].rows)
            shards[-1].append(**{k: v[start:start + take] for k, v in cols.items()})
            start += take
        self.stats[split]["rows"] += n
        self.stats[split]["positives"] += int(lab.sum())
        lens, counts = np.unique(cols["hist_end"] - cols["hist_start"], return_counts=True)
        self._hist_lens[split].update(dict(zip(lens.tolist(), counts.tolist())))

    def finish(self, *, name: str, fp: str, vocabs: dict[str, Vocab], max_len: int, schema: dict | None = None,
               content: np.ndarray | None = None, bad_rows: dict | None = None, extra: dict | None = None) -> dict:
        with self.aborting():
            report = self._finish(name, fp, vocabs, max_len, schema, content, bad_rows, extra)
            self._swap_in()
        return report

    def _finish(self, name, fp, vocabs, max_len, schema, content, bad_rows, extra) -> dict:
        for shards in self._shards.values():
            shards[-1].close()
        self.log.close()
        (self.root / "vocab").mkdir(exist_ok=True)
        for vname, v in vocabs.items():
            atomic_write_text(self.root / "vocab" / f"{vname}.json", v.to_json())
        if content is not None:
            np.save(self.root / "content.npy", content.astype(np.float32))
        report = self._report(name, vocabs, max_len, bad_rows or {}, extra or {})
        atomic_write_text(self.root / "report.json", json.dumps(report, indent=1))
        atomic_write_text(self.root / "report.md", report_markdown(report))
        meta = {"format_version": FORMAT_VERSION, "name": name, "fingerprint": fp, "max_len": max_len,
                "layout": self.layout.__dict__, "vocab_sizes": {k: len(v) for k, v in vocabs.items()},
                "content_dim": int(content.shape[1]) if content is not None else 0,
                "splits": {s: [str(w.dir.relative_to(self.root)) for w in self._shards.get(s, [])]
                           for s in SPLITS},
                "schema": schema}
        atomic_write_text(self.root / "meta.json", json.dumps(meta, indent=1))
        return report

    def _report(self, name, vocabs, max_len, bad_rows, extra) -> dict:
        rep = {"dataset": name, "splits": {}, "bad_rows_skipped": bad_rows,
               "vocab_sizes": {k: len(v) for k, v in vocabs.items()}, **extra}
        edges = [0, 1, 10, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, np.iinfo(np.int64).max]
        for s in SPLITS:
            lens = np.array(list(self._hist_lens[s]), np.int64)
            counts = np.array(list(self._hist_lens[s].values()), np.int64)
            n = int(counts.sum())
            hist, _ = np.histogram(lens, bins=edges, weights=counts)
            # Integer sums, then one division: exactly numpy's mean over the rows' lengths (sums below 2**53).
            rep["splits"][s] = {
                **self.stats[s],
                "mean_history_len": {str(m): int((np.minimum(lens, m) * counts).sum()) / n if n else 0.0
                                     for m in sorted({max_len, 50, 1024})},
                "max_history_len": int(lens.max()) if n else 0,
                "history_len_histogram": {f"[{edges[i]},{edges[i + 1]})" if i < len(edges) - 2
                                          else f">={edges[i]}": int(c) for i, c in enumerate(hist)},
            }
        rep["warnings"] = [*rep.get("warnings", []), *_warnings(rep)]
        return rep


def _warnings(rep: dict) -> list[str]:
    """What passes preparation but spoils a result: a split a run cannot evaluate, histories that may leak."""
    out = []
    for s, r in rep["splits"].items():
        n, pos = r["rows"], r["positives"]
        if n == 0:
            out.append(f"split {s!r} is empty: a run needs rows in train, valid and test; check the split "
                       f"(or the input's size)")
        elif pos in (0, n):
            out.append(f"split {s!r}: all {n:,} labels are {int(pos > 0)}: AUC is undefined on a single class, so "
                       f"a run cannot be evaluated on it; check the label column and the split")
    checks = rep.get("history_checks") or {}
    late = checks.get("rows_with_behaviors_not_before_impression", 0)
    unsorted = checks.get("rows_with_unsorted_history", 0)
    if late:
        out.append(f"{late:,} row(s) have behaviors at or after their impression's time: the history may leak "
                   f"what happened after the impression; check the behavior times")
    if unsorted:
        out.append(f"{unsorted:,} row(s) have a history not sorted oldest first: models take the most recent "
                   f"behaviors from its end; sort each history by time")
    return out


def report_markdown(rep: dict) -> str:
    splits = markdown_table([[s, f"{r['rows']:,}", f"{r['positives']:,}",
                              ", ".join(f"{k}: {v:.2f}" for k, v in r["mean_history_len"].items()),
                              str(r["max_history_len"])] for s, r in rep["splits"].items()],
                            ["split", "rows", "positives", "mean history (by max_len)", "max history"])
    buckets = next(iter(rep["splits"].values()))["history_len_histogram"]
    histogram = markdown_table([[b] + [str(r["history_len_histogram"][b]) for r in rep["splits"].values()]
                                for b in buckets], ["bucket", *rep["splits"]])
    lines = [f"# Preparation report: {rep['dataset']}", "", splits, "",
             "Bad rows skipped: " + (", ".join(f"{k}: {v}" for k, v in rep["bad_rows_skipped"].items()) or "none"),
             "", "Vocabulary sizes (incl. pad and OOV): "
             + ", ".join(f"{k}: {v:,}" for k, v in rep["vocab_sizes"].items()), "", "History-length histogram:", "",
             histogram]
    if "rows_read" in rep:
        lines += ["", f"Rows read: {rep['rows_read']:,}"
                  + (f" (CSV data lines: {rep['lines_read']:,})" if rep.get("lines_read") else "")
                  + f"; written: {rep.get('rows_written', 0):,}; skipped: {sum(rep['bad_rows_skipped'].values()):,}"]
    if "time_unit" in rep:
        unit = TIME_UNIT_NAMES[rep["time_unit"]]
        lines += ["", f"Times read as unix {unit} (time_unit {rep['time_unit']})"
                  + (", stored as unix seconds." if rep["time_unit"] != "s" else ".")]
    if rep.get("warnings"):
        lines += ["", "Warnings:", ""] + [f"- WARNING: {w}" for w in rep["warnings"]]
    return "\n".join(lines) + "\n"
