"""What a run leaves for readers: its results.json as a typed RunResult, or where a stopped run stopped.

results.json is read by the CLI, compare, demo, the sweeps and the benchmarks; they read it through
`RunResult.read(path)` rather than string keys on a raw dict. The JSON written keeps the key names runs have always
written (results/ holds such files): optional keys absent from an older file take their defaults, keys this code
does not know are kept in `extra` and written back.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, RunError
from ..typed import from_dict


@dataclass
class RunResult:
    """A finished run: the best epoch's validation metrics, the test metrics of its weights, and the run's cost."""
    name: str
    model: str                     # the registered model name
    dataset: str
    max_len: int                   # the history length the model was trained and evaluated with
    seed: int
    best_epoch: int                # 1-based
    epochs_run: int
    valid: dict                    # metrics.evaluate of the best epoch: auc, logloss, n, gauc, uauc, groups_used, ...
    test: dict                     # metrics.evaluate of best.pt on the test split
    epochs: list[dict]             # per epoch: {"epoch", "step", "valid_<metric>": ...}
    params: dict[str, int]         # accounting.count_params: dense, embedding, frozen
    inference_gflops_per_60: float
    train_flops_per_impression: float
    train_seconds: float
    config: dict                   # the resolved run config
    train_impressions: int | None = None          # the training set used (after data.train_fraction)
    train_impressions_per_s: float | None = None
    peak_rss_mib: list | None = None              # per rank
    embedding_params_held: list | None = None     # per rank: less when tables are row-sharded
    distilled_from: dict | None = None            # the teacher's model config of a distilled student
    row_sharded: dict | None = None               # {"world", "tables"}: only written for a row-sharded run
    teacher_test: dict | None = None              # only written for a distilled run
    fields: list | None = None                    # the fields trained on, only written for a field selection
    extra: dict = field(default_factory=dict)     # keys of results.json this code does not know, kept as read

    # the key order of results.json as runs have always written it; the two keys after it are written only when set
    ORDER = ("name", "model", "dataset", "max_len", "seed", "best_epoch", "epochs_run", "valid", "test", "epochs",
             "params", "inference_gflops_per_60", "train_flops_per_impression", "train_impressions",
             "train_impressions_per_s", "train_seconds", "peak_rss_mib", "embedding_params_held", "config",
             "distilled_from")
    ONLY_WHEN_SET = ("row_sharded", "teacher_test", "fields")

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.ORDER}
        out.update({k: getattr(self, k) for k in self.ONLY_WHEN_SET if getattr(self, k) is not None})
        return {**out, **self.extra}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "results") -> "RunResult":
        if not isinstance(raw, dict):
            raise RunError(f"{where}: not the results of a ctrscale run (expected a mapping)")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            result = from_dict(cls, {k: v for k, v in raw.items() if k in known}, "")
        except ConfigError as e:
            raise RunError(f"{where}: not the results of a ctrscale run ({e})") from None
        result.extra = {k: v for k, v in raw.items() if k not in known}
        return result

    @classmethod
    def read(cls, path: str | Path) -> "RunResult":
        """A run's results.json; a file that is not one is a RunError naming it."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RunError(f"{path}: cannot read the run's results ({type(e).__name__}: {e})") from None
        return cls.from_dict(raw, str(path))


@dataclass
class StoppedRun:
    """A run stopped by train.max_steps before it finished: `ctrscale train --resume` continues it from last.pt."""
    step: int
    run_dir: Path
