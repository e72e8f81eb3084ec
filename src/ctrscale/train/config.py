"""The run config: typed sections, loaded from YAML with `key=value` overrides, saved resolved beside results."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..models.config import ModelChoice, resolve
from ..models.tables import EMBEDDING_INITS
from ..typed import ConfigError, apply_overrides, check_fields, checked, from_dict, load_yaml, to_dict

DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # train.device


@dataclass
class DataSection:
    name: str | None = "synthetic"   # a catalog name (synthetic, ml100k-ctr-v1, ml1m-u2999-ctr-v1) ...
    path: str | None = None          # ... or a prepared folder
    raw_dir: str | None = None
    options: dict = field(default_factory=dict)  # preparer options (synthetic sizes)
    fields: tuple[str, ...] | None = None  # train on these prepared fields only (behavior fields as hist.NAME);
                                           # None: all
    drop_fields: tuple[str, ...] = ()      # ... minus these (PreparedDataset.select_fields)
    max_len: int | None = checked(None, ge=1)    # default (None): the dataset's
    batch_size: int = checked(1024, ge=1)
    eval_batch_size: int = checked(4096, ge=1)
    num_workers: int = checked(0, ge=0)
    length_window: int = checked(0, ge=0)        # > 0: batch similar history lengths together (windows of this
                                                 # many batches)
    listwise: bool | None = None     # whole requests per batch; default: what the model trains on (SparseCTR)
    train_fraction: float = checked(1.0, gt=0, le=1)  # < 1: train on this share of the training requests
                                                      # (data-size scaling)
    subsample_seed: int = checked(0, ge=0)       # which share; nested across fractions for one seed, the same for
                                                 # all runs
    streaming: bool = False          # train from a shuffle buffer over shard chunks (bounded memory; data/stream.py)
    shuffle_buffer: int = checked(100_000, ge=1)  # rows the streaming shuffle buffer holds
    chunk_rows: int = checked(65_536, ge=1)       # consecutive rows read at a time when streaming


@dataclass
class OptimSection:
    optimizer: str = checked("adam", choices=("adam", "adamw"))
    lr: float = checked(1e-3, ge=0)              # dense parameters
    weight_decay: float = checked(0.0, ge=0)
    emb_lr: float = checked(1e-3, ge=0)          # embedding ("sparse") parameters
    emb_weight_decay: float = checked(0.0, ge=0)
    betas: tuple[float, float] = checked((0.9, 0.999), ge=0, lt=1)
    schedule: str = checked("constant", choices=("constant", "cosine", "linear", "plateau"))
                                                 # after warm-up; linear decays to 0 over the run; plateau:
                                                 # constant, times plateau_factor after each plateau_patience
                                                 # epochs without a better validation metric
    warmup_steps: int = checked(0, ge=0)
    plateau_factor: float = checked(0.1, gt=0, lt=1)  # FuxiCTR's ReduceLROnPlateau defaults: 0.1, 1 epoch, 1e-6
    plateau_patience: int = checked(1, ge=1)
    min_lr: float = checked(1e-6, ge=0)          # plateau: no group's learning rate goes below this
    grad_clip: float = checked(10.0, ge=0)       # max global grad norm; 0 disables


@dataclass
class TrainSection:
    epochs: int = checked(3, ge=1)
    seed: int = checked(0, ge=0)
    patience: int = checked(1, ge=1)             # epochs without a better validation metric before stopping
    early_stop_metric: str = checked("auc", choices=("auc", "gauc"))  # the validation metric that picks the best
                                                                      # epoch
    checkpoint_every: int = checked(200, ge=0)   # steps between mid-epoch checkpoints (0: only at epoch ends)
    max_steps: int = checked(0, ge=0)            # stop (resumably) after this many steps in this process; 0: no limit
    log_every: int = checked(50, ge=1)
    device: str = "auto"                         # auto | cpu | cuda | cuda:N (checked in RunConfig.validate)
    precision: str = checked("auto", choices=("auto", "fp32", "bf16"))  # auto: bf16 autocast on GPU
    progress: bool = True
    threads: int = checked(0, ge=0)              # torch intra-op threads; 0 leaves the default
    grad_accum: int = checked(1, ge=1)           # > 1: each batch's gradient from this many micro-batches (less
                                                 # memory, same step; batch statistics such as Dice's BatchNorm see
                                                 # the micro-batches)
    sparse_reset: bool = False       # multi-epoch "asynchronous" training: embedding tables (and their optimizer
                                     # state) back to their pre-training snapshot at every later epoch (sparse.py)
    sparse_init: str | None = None   # warm-start the embedding tables from an earlier run's best.pt (or a .pt)
    embedding_sharding: str = checked("replicated", choices=("replicated", "row"))
                                     # under torchrun: replicated (every rank holds every table) | row (each table's
                                     # rows spread over the ranks; train/sharding.py)
    shard_min_rows: int = checked(1024, ge=0)    # row sharding: tables with fewer rows stay replicated
    compile: bool = False            # torch.compile the training step's forward and backward (inductor; on CPU it
                                     # needs a C++ compiler); evaluation stays eager
    embedding_init: str = checked("model", choices=EMBEDDING_INITS)  # model: each model's own; normal (with
                                                                     # embedding_init_std), xavier_normal/uniform
    embedding_init_std: float = checked(1e-4, gt=0)  # embedding_init=normal (FuxiCTR's default 1e-4)
    skip_nonfinite_steps: int = checked(0, ge=0)  # steps with a non-finite loss or gradient norm that may be
                                                  # skipped before the run stops (0: stop at the first)


@dataclass
class DistillSection:
    """Online distillation (SUAN paper): a teacher trained together with the student on the same batches,
    loss = BCE(student) + BCE(teacher) + weight * BCE(sigmoid(z_s / t), sigmoid(z_t / t)) with the teacher's
    soft label detached. Only the student is kept for serving."""
    teacher: ModelChoice | None = None  # model config of the teacher: {name: suan, size: size-3, ...}
    teacher_max_len: int | None = checked(None, ge=1)  # the teacher's (longer) history; default: the student's
    temperature: float = checked(2.0, gt=0)
    weight: float | None = checked(None, ge=0)   # lambda; default = temperature (the paper's choice)

    def __post_init__(self):
        if self.teacher is not None:
            self.teacher = resolve(self.teacher, "distill.teacher")


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelChoice = field(default_factory=lambda: {"name": "din"})  # resolved: every key of the model
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    distill: DistillSection | None = None

    def __post_init__(self):
        self.model = resolve(self.model)  # a section given as a dict in code resolves as one loaded from YAML

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def validate(self) -> "RunConfig":
        """Checks across keys; `from_dict` has checked each key's type and range and resolved the model sections
        through the registry (check_fields repeats the checks for a config built in code)."""
        check_fields(self)
        if not self.name or Path(self.name).is_absolute() or ".." in Path(self.name).parts:
            raise ConfigError(f"name: the run folder's name inside out_dir ({self.out_dir}); an empty, absolute or "
                              f"'..' name would leave it, got {self.name!r}")
        if self.distill is not None and self.distill.teacher is None:
            raise ConfigError("distill.teacher: required: the teacher's model section {name: ..., ...} (see "
                              "`ctrscale ls`)")
        if not DEVICE.fullmatch(self.train.device):
            raise ConfigError(f"train.device: must be auto, cpu, cuda or cuda:N, got {self.train.device!r}")
        return self

    def to_dict(self) -> dict:
        return to_dict(self)


PACKAGED = Path(__file__).resolve().parents[1] / "configs"


def config_path(name: str | Path) -> Path:
    """A config file, or the name of one shipped with ctrscale (src/ctrscale/configs/NAME.yaml, e.g.
    fuxictr-features); a file of that name wins."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = PACKAGED / f"{name}.yaml"
    if p.suffix == "" and shipped.is_file():
        return shipped
    names = sorted(q.stem for q in PACKAGED.glob("*.yaml"))
    raise ConfigError(f"{name}: no such config file, and no config of that name ships with ctrscale "
                      f"({', '.join(names)})")


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """A run config: `base`, then the YAML file at `path`, then `key=value` overrides; every key checked."""
    raw = dict(base or {})
    if path is not None:
        path = config_path(path)
        loaded = load_yaml(Path(path).read_text(), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        raw.update(loaded)
    raw = apply_overrides(raw, list(overrides))
    return from_dict(RunConfig, raw, "").validate()


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
