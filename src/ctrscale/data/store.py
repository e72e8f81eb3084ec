"""The prepared-dataset layout: vocabularies, a behavior log and columnar shards of impressions.

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
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD, OOV = 0, 1
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
MARKER = ".ctrscale-prepared"


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
    """Identity of a preparation: its options and its inputs (path, size, mtime)."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def is_prepared(root: str | Path, fp: str) -> bool:
    meta = Path(root) / "meta.json"
    return meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fp


@dataclass
class Layout:
    """Column names of a prepared dataset, in the order the arrays hold them."""
    sparse: list[str]          # categorical non-behavioral fields
    dense: list[str]           # numeric non-behavioral fields
    hist: list[str]            # behavior fields
    field_vocab: dict[str, str]  # categorical field or behavior field -> vocabulary name
    roles: dict[str, str]        # non-behavioral field -> user | item | context


class DatasetWriter:
    """Streams a preparation to disk: shards per split, the behavior log, vocabularies, then meta.json."""

    def __init__(self, root: str | Path, layout: Layout, shard_rows: int = 1_000_000):
        self.root = Path(root)
        if self.root.exists():
            # Replace only an earlier preparation (finished or half-written), never an unrelated folder.
            ours = (self.root / "meta.json").exists() or (self.root / MARKER).exists()
            if not ours and any(self.root.iterdir()):
                raise FileExistsError(f"{self.root}: exists and is not a prepared dataset; refusing to overwrite")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        (self.root / MARKER).touch()
        self.layout = layout
        self.shard_rows = shard_rows
        self.log = ColumnWriter(self.root / "log")
        self._shards: dict[str, list[ColumnWriter]] = {}
        self.stats = {s: {"rows": 0, "positives": 0} for s in SPLITS}
        self._hist_lens: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}

    def append_log(self, ids: np.ndarray, times: np.ndarray) -> int:
        """Append behaviors (ids [E, F_hist] int32, unix seconds [E]); returns the offset of the first one."""
        base = self.log.rows
        if len(ids):
            self.log.append(ids=ids.astype(np.int32), time=times.astype(np.int64))
        return base

    def append_rows(self, split: str, *, sparse, dense, label, time, user, request, hist_start, hist_end) -> None:
        n = len(label)
        if n == 0:
            return
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
        self._hist_lens[split].append(cols["hist_end"] - cols["hist_start"])

    def finish(self, *, name: str, fp: str, vocabs: dict[str, Vocab], max_len: int, schema: dict | None = None,
               content: np.ndarray | None = None, bad_rows: dict | None = None, extra: dict | None = None) -> dict:
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
            lens = np.concatenate(self._hist_lens[s]) if self._hist_lens[s] else np.zeros(0, np.int64)
            hist, _ = np.histogram(lens, bins=edges)
            rep["splits"][s] = {
                **self.stats[s],
                "mean_history_len": {str(m): float(np.minimum(lens, m).mean()) if len(lens) else 0.0
                                     for m in sorted({max_len, 50, 1024})},
                "max_history_len": int(lens.max()) if len(lens) else 0,
                "history_len_histogram": {f"[{edges[i]},{edges[i + 1]})" if i < len(edges) - 2
                                          else f">={edges[i]}": int(c) for i, c in enumerate(hist)},
            }
        return rep


def report_markdown(rep: dict) -> str:
    lines = [f"# Preparation report: {rep['dataset']}", "", "| split | rows | positives | mean history (by max_len) |"
             " max history |", "|---|---|---|---|---|"]
    for s, r in rep["splits"].items():
        means = ", ".join(f"{k}: {v:.2f}" for k, v in r["mean_history_len"].items())
        lines.append(f"| {s} | {r['rows']:,} | {r['positives']:,} | {means} | {r['max_history_len']} |")
    lines += ["", "Bad rows skipped: " + (", ".join(f"{k}: {v}" for k, v in rep["bad_rows_skipped"].items())
                                          or "none"), "", "Vocabulary sizes (incl. pad and OOV): "
              + ", ".join(f"{k}: {v:,}" for k, v in rep["vocab_sizes"].items()), "", "History-length histogram:", "",
              "| bucket | " + " | ".join(rep["splits"]) + " |", "|---|" + "---|" * len(rep["splits"])]
    buckets = next(iter(rep["splits"].values()))["history_len_histogram"]
    for b in buckets:
        counts = " | ".join(str(r["history_len_histogram"][b]) for r in rep["splits"].values())
        lines.append(f"| {b} | {counts} |")
    return "\n".join(lines) + "\n"
