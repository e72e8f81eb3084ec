"""The run config: typed sections, loaded from YAML with `key=value` overrides, saved resolved beside results."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..typed import ConfigError, apply_overrides, from_dict, to_dict


@dataclass
class DataSection:
    name: str | None = "synthetic"   # a catalog name (synthetic, ml100k-ctr-v1, ml1m-u2999-ctr-v1) ...
    path: str | None = None          # ... or a prepared folder
    raw_dir: str | None = None
    options: dict = field(default_factory=dict)  # preparer options (synthetic sizes)
    max_len: int | None = None       # default: the dataset's
    batch_size: int = 1024
    eval_batch_size: int = 4096
    num_workers: int = 0
    length_window: int = 0           # > 0: batch similar history lengths together (windows of this many batches)
    listwise: bool | None = None     # whole requests per batch; default: what the model trains on (SparseCTR)
    train_fraction: float = 1.0      # < 1: train on this share of the training requests (data-size scaling)
    subsample_seed: int = 0          # which share; nested across fractions for one seed, the same for all runs
    streaming: bool = False          # train from a shuffle buffer over shard chunks (bounded memory; data/stream.py)
    shuffle_buffer: int = 100_000    # rows the streaming shuffle buffer holds
    chunk_rows: int = 65_536         # consecutive rows read at a time when streaming


@dataclass
class OptimSection:
    optimizer: str = "adam"          # adam | adamw
    lr: float = 1e-3                 # dense parameters
    weight_decay: float = 0.0
    emb_lr: float = 1e-3             # embedding ("sparse") parameters
    emb_weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"       # constant | cosine | linear (decay to 0 over the run), after warm-up
    warmup_steps: int = 0
    grad_clip: float = 10.0          # max global grad norm; 0 disables


@dataclass
class TrainSection:
    epochs: int = 3
    seed: int = 0
    patience: int = 1                # epochs without a better validation metric before stopping
    early_stop_metric: str = "auc"   # auc | gauc: the validation metric that picks the best epoch
    checkpoint_every: int = 200      # steps between mid-epoch checkpoints (0: only at epoch ends)
    max_steps: int = 0               # stop (resumably) after this many steps in this process; 0: no limit
    log_every: int = 50
    device: str = "auto"             # auto | cpu | cuda
    precision: str = "auto"          # auto (bf16 autocast on GPU) | fp32 | bf16
    progress: bool = True
    threads: int = 0                 # torch intra-op threads; 0 leaves the default
    grad_accum: int = 1              # > 1: each batch's gradient from this many micro-batches (less memory, same
                                     # step; batch statistics such as Dice's BatchNorm see the micro-batches)
    sparse_reset: bool = False       # multi-epoch "asynchronous" training: embedding tables (and their optimizer
                                     # state) back to their pre-training snapshot at every later epoch (sparse.py)
    sparse_init: str | None = None   # warm-start the embedding tables from an earlier run's best.pt (or a .pt)
    embedding_sharding: str = "replicated"  # under torchrun: replicated (every rank holds every table) | row
                                            # (each table's rows spread over the ranks; train/sharding.py)
    shard_min_rows: int = 1024       # row sharding: tables with fewer rows stay replicated


@dataclass
class DistillSection:
    """Online distillation (SUAN paper): a teacher trained together with the student on the same batches,
    loss = BCE(student) + BCE(teacher) + weight * BCE(sigmoid(z_s / t), sigmoid(z_t / t)) with the teacher's
    soft label detached. Only the student is kept for serving."""
    teacher: dict = field(default_factory=dict)  # model config of the teacher: {name: suan, size: size-3, ...}
    teacher_max_len: int | None = None           # the teacher's (longer) history; default: the student's
    temperature: float = 2.0
    weight: float | None = None                  # lambda; default = temperature (the paper's choice)


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    model: dict = field(default_factory=lambda: {"name": "din"})
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    distill: DistillSection | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def validate(self) -> "RunConfig":
        if self.optim.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optim.optimizer: adam or adamw, got {self.optim.optimizer!r}")
        if self.optim.schedule not in ("constant", "cosine", "linear"):
            raise ConfigError(f"optim.schedule: constant, cosine or linear, got {self.optim.schedule!r}")
        if self.train.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision: auto, fp32 or bf16, got {self.train.precision!r}")
        if self.train.early_stop_metric not in ("auc", "gauc"):
            raise ConfigError(f"train.early_stop_metric: auc or gauc, got {self.train.early_stop_metric!r}")
        if self.distill is not None and "name" not in self.distill.teacher:
            raise ConfigError("distill.teacher needs a model 'name'")
        if not 0 < self.data.train_fraction <= 1:
            raise ConfigError(f"data.train_fraction must be in (0, 1], got {self.data.train_fraction}")
        if "name" not in self.model:
            raise ConfigError("model.name is required")
        return self

    def to_dict(self) -> dict:
        return to_dict(self)


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    raw = dict(base or {})
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        raw.update(loaded)
    raw = apply_overrides(raw, list(overrides))
    return from_dict(RunConfig, raw, str(path or "config")).validate()


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
