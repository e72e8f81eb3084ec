"""What a run reports while it trains: metrics.csv and TensorBoard (rank 0), a progress bar and one line per epoch
on the terminal (train.progress)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from .config import RunConfig


class NullLog:
    """The metric log of ranks other than 0."""

    def log(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class MetricLog:
    """metrics.csv + TensorBoard; on resume, rows past the checkpoint's step are dropped from both."""

    FIELDS = ["step", "epoch", "split", "loss", "auc", "gauc", "uauc", "logloss", "lr", "impressions_per_s"]

    def __init__(self, run_dir: Path, resume_step: int):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resume_step and self.path.exists():
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)
        except ImportError:  # tensorboard is a declared dependency; stay usable without it
            pass

    def log(self, step: int, epoch: int, split: str, **values) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow({"step": step, "epoch": epoch, "split": split, **values})
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def progress_bar(cfg: RunConfig, total: int, initial: int, desc: str):
    """A tqdm bar over an epoch's steps, or None with train.progress=false."""
    if not cfg.train.progress:
        return None
    from tqdm.auto import tqdm
    # disable=None: a bar on a terminal, none in a log file (where each redraw would add a line)
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def say(cfg: RunConfig | None, msg: str) -> None:
    """Print a line with train.progress; `cfg` None (ranks other than 0) prints nothing."""
    if cfg is not None and cfg.train.progress:
        print(msg, flush=True)
