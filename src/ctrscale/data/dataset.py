"""Reading a prepared dataset: its feature spec for the models, and vectorised batch gathering for the loader."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..batch import DataSpec  # noqa: F401  (re-exported: data code reads it here)
from ..errors import ConfigError
from .gsu import Searcher
from .store import SPLITS, Vocab, read_columns


class SplitData:
    """The impressions of one split, over its shards (memory maps). `columns` keeps only those columns of the
    2-d fields ({"sparse": [...], "dense": [...]}: a run's field selection), applied as rows are read."""

    def __init__(self, shard_dirs: list[Path], columns: dict[str, np.ndarray] | None = None):
        self.shards = [read_columns(d) for d in shard_dirs]
        sizes = [len(s["label"]) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.columns = columns or {}

    def _select(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for k, cols in self.columns.items():
            if k in out:
                out[k] = out[k][:, cols]
        return out

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def column(self, name: str) -> np.ndarray:
        """A whole column in memory (for keys and labels; the wide columns are read with take())."""
        if not self.shards:
            return np.zeros(0)
        return self._select({name: np.concatenate([np.asarray(s[name]) for s in self.shards])})[name]

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64)
        if len(self.shards) == 1:
            return self._select({k: np.asarray(v[idx]) for k, v in self.shards[0].items()})
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = {k: np.empty((len(idx), *v.shape[1:]), v.dtype) for k, v in self.shards[0].items()}
        for s in np.unique(shard):
            sel = shard == s
            local = idx[sel] - self.offsets[s]
            for k, v in self.shards[s].items():
                out[k][sel] = v[local]
        return self._select(out)


class LogColumns:
    """The behavior log's id matrix (memory-mapped, (N, F_hist)) seen through a field selection: rows are read
    first, then only the kept columns, so nothing of the whole log is copied."""

    def __init__(self, ids: np.ndarray, cols: np.ndarray):
        self.ids, self.cols = ids, cols
        self.shape = (ids.shape[0], len(cols))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, col = key
            return np.asarray(self.ids[rows])[..., self.cols[col]]
        return np.asarray(self.ids[key])[..., self.cols]


class PreparedDataset:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root}: not a prepared dataset (no meta.json); "
                                    f"run `ctrscale data prepare` first")
        self.meta = json.loads(meta_path.read_text())
        lay = self.meta["layout"]
        self._splits: dict[str, SplitData] = {}
        self._columns: dict[str, np.ndarray] = {}  # the run's field selection (select_fields)
        content_key = (self.meta.get("schema") or {}).get("content") or {}
        self.spec = DataSpec(sparse=tuple(lay["sparse"]), dense=tuple(lay["dense"]), hist=tuple(lay["hist"]),
                             roles=lay["roles"], field_vocab=lay["field_vocab"],
                             vocab_sizes=self.meta["vocab_sizes"], max_len=self.meta["max_len"],
                             content_dim=self.meta.get("content_dim", 0),
                             content_key=content_key.get("key") if self.meta.get("content_dim") else None,
                             name=self.meta["name"], dense_percentiles=self._dense_percentiles(lay["dense"]))
        log = read_columns(self.root / "log")
        nh = len(self.spec.hist)
        self.log_ids = log.get("ids", np.zeros((0, nh), np.int32))
        self.log_time = log.get("time", np.zeros(0, np.int64))
        self._searchers: dict = {}

    @property
    def fields(self) -> list[str]:
        """Every field by the name data.fields / data.drop_fields take: non-behavioral fields as they are, behavior
        fields as hist.NAME."""
        return [*self.spec.sparse, *self.spec.dense, *(f"hist.{h}" for h in self.spec.hist)]

    def select_fields(self, keep=None, drop=()) -> "PreparedDataset":
        """Train on a subset of the prepared fields without preparing again: `keep` (all when None) minus `drop`.
        The spec, the split columns and the behavior log then show only those fields, in their prepared order."""
        if keep is None and not drop:
            return self
        have = self.fields
        for key, names in (("data.fields", keep or ()), ("data.drop_fields", drop)):
            unknown = [n for n in names if n not in have]
            if unknown:
                raise ConfigError(f"{key}: no field {', '.join(map(repr, unknown))} in {self.root}; its fields are "
                                  f"{', '.join(have)} (behavior fields as hist.NAME)")
        chosen = set(have if keep is None else keep) - set(drop)
        spec = self.spec
        sparse = [i for i, f in enumerate(spec.sparse) if f in chosen]
        dense = [i for i, f in enumerate(spec.dense) if f in chosen]
        hist = [i for i, h in enumerate(spec.hist) if f"hist.{h}" in chosen]
        kept = chosen
        content_key = spec.content_key if spec.content_key in kept else None
        vocabs = {spec.field_vocab[f] for f in kept if f in spec.field_vocab}
        self.spec = dataclasses.replace(
            spec, sparse=tuple(spec.sparse[i] for i in sparse), dense=tuple(spec.dense[i] for i in dense),
            hist=tuple(spec.hist[i] for i in hist), roles={f: r for f, r in spec.roles.items() if f in kept},
            field_vocab={f: v for f, v in spec.field_vocab.items() if f in kept},
            content_dim=spec.content_dim if content_key else 0, content_key=content_key,
            vocab_sizes={v: n for v, n in spec.vocab_sizes.items() if v in vocabs},
            dense_percentiles={f: p for f, p in spec.dense_percentiles.items() if f in kept})
        self._columns = {"sparse": np.array(sparse, np.int64), "dense": np.array(dense, np.int64)}
        self._splits, self._searchers = {}, {}
        self.log_ids = LogColumns(self.log_ids, np.array(hist, np.int64))
        return self

    def _dense_percentiles(self, dense: list[str]) -> dict[str, list[float]]:
        train = self.split("train")
        if not dense or not len(train):
            return {}
        pct = np.percentile(train.column("dense").astype(np.float64), np.arange(101), axis=0)  # (101, F_dense)
        return {f: pct[:, j].tolist() for j, f in enumerate(dense)}

    def split(self, name: str) -> SplitData:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; have {SPLITS}")
        if name not in self._splits:
            self._splits[name] = SplitData([self.root / d for d in self.meta["splits"][name]], self._columns)
        return self._splits[name]

    def vocab(self, name: str) -> Vocab:
        return Vocab.from_json((self.root / "vocab" / f"{name}.json").read_text())

    def content(self) -> np.ndarray | None:
        p = self.root / "content.npy"
        return np.load(p) if p.exists() and self.spec.content_dim else None

    def searcher(self, cfg):
        """The GSU for a gsu.CandidateSequence setting (built once: it may hold an item x item cosine table)."""
        if cfg not in self._searchers:
            self._searchers[cfg] = Searcher(self, cfg)
        return self._searchers[cfg]

    @property
    def report(self) -> dict:
        return json.loads((self.root / "report.json").read_text())

    def gather(self, split: str, idx: np.ndarray, max_len: int, trim: bool = False,
               searcher=None) -> dict[str, np.ndarray]:
        """Rows idx of a split with their histories cut to the `max_len` most recent behaviors, right-aligned.
        trim: drop the left padding no row of this batch needs (width = longest history, rounded up to a multiple
        of 8 so few distinct shapes occur); models ignore padding, so only the cost changes.
        searcher: a gsu.Searcher adding each row's candidate-specific behaviors (cand_hist, cand_hist_time)."""
        rows = self.split(split).take(idx)
        start, end = rows.pop("hist_start"), rows.pop("hist_end")
        if searcher is not None:
            rows.update(searcher.take(split, idx))
        if trim:
            longest = int((end - start).max(initial=0))
            max_len = min(max_len, max(8, -(-longest // 8) * 8))
        pos = end[:, None] - max_len + np.arange(max_len)  # (B, L) log positions, most recent last
        valid = pos >= start[:, None]
        if len(self.log_time) == 0:
            valid[:] = False
        pos = np.where(valid, pos, 0)
        if valid.any():
            hist = np.asarray(self.log_ids[pos.ravel()]).reshape(*pos.shape, -1) * valid[..., None]
            hist_time = np.asarray(self.log_time[pos.ravel()]).reshape(pos.shape) * valid
        else:
            hist = np.zeros((*pos.shape, len(self.spec.hist)), np.int32)
            hist_time = np.zeros(pos.shape, np.int64)
        rows["hist"], rows["hist_time"] = hist, hist_time
        return rows

    def history_lengths(self, split: str, max_len: int) -> np.ndarray:
        """Each row's history length after the cut to max_len."""
        sp = self.split(split)
        return np.minimum(sp.column("hist_end") - sp.column("hist_start"), max_len)
