"""Reading a prepared dataset: its feature spec for the models, and vectorised batch gathering for the loader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..batch import DataSpec  # noqa: F401  (re-exported: data code reads it here)
from .gsu import Searcher
from .store import SPLITS, Vocab, read_columns


class SplitData:
    """The impressions of one split, over its shards (memory maps)."""

    def __init__(self, shard_dirs: list[Path]):
        self.shards = [read_columns(d) for d in shard_dirs]
        sizes = [len(s["label"]) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def column(self, name: str) -> np.ndarray:
        """A whole column in memory (for keys and labels; the wide columns are read with take())."""
        if not self.shards:
            return np.zeros(0)
        return np.concatenate([np.asarray(s[name]) for s in self.shards])

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64)
        if len(self.shards) == 1:
            return {k: np.asarray(v[idx]) for k, v in self.shards[0].items()}
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = {k: np.empty((len(idx), *v.shape[1:]), v.dtype) for k, v in self.shards[0].items()}
        for s in np.unique(shard):
            sel = shard == s
            local = idx[sel] - self.offsets[s]
            for k, v in self.shards[s].items():
                out[k][sel] = v[local]
        return out


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
            self._splits[name] = SplitData([self.root / d for d in self.meta["splits"][name]])
        return self._splits[name]

    def vocab(self, name: str) -> Vocab:
        return Vocab.from_json((self.root / "vocab" / f"{name}.json").read_text())

    def content(self) -> np.ndarray | None:
        p = self.root / "content.npy"
        return np.load(p) if p.exists() else None

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
