"""What a run reports while it trains: metrics.csv and TensorBoard (rank 0), a progress bar and one line per epoch
on the terminal, or a progress line every 30 s where there is none (train.progress)."""
from __future__ import annotations

import csv
import math
import os
import sys
import time
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
    """A tqdm bar over an epoch's steps on a terminal; elsewhere (a log file, CI, a notebook), where each redraw
    would add a line, a ProgressLines; None with train.progress=false."""
    if not cfg.train.progress:
        return None
    if not sys.stderr.isatty():
        return ProgressLines(total, initial, desc, cfg.data.batch_size,
                             float(os.environ.get("CTRSCALE_PROGRESS_SECONDS", 30)))
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


class ProgressLines:
    """A progress line every `every` seconds (step, impressions/s, loss, time left in the epoch), for output that
    is not a terminal: the same calls as the tqdm bar it stands in for. `every`: $CTRSCALE_PROGRESS_SECONDS
    (default 30)."""

    def __init__(self, total: int, initial: int, desc: str, batch_size: int, every: float = 30.0):
        self.total, self.step, self.desc, self.batch_size, self.every = total, initial, desc, batch_size, every
        self.start_step, self.t0 = initial, time.perf_counter()
        self.last, self.loss = self.t0, None

    def set_postfix(self, loss: str | None = None) -> None:
        self.loss = loss

    def update(self, n: int = 1) -> None:
        self.step += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = (self.step - self.start_step) / max(now - self.t0, 1e-9)   # steps per second
            left = (self.total - self.step) / rate if rate > 0 else float("inf")
            print(f"{self.desc}: step {self.step}/{self.total}, ~{rate * self.batch_size:,.0f} impressions/s, "
                  f"loss {self.loss}, {_duration(left)} left in the epoch", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown time"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def say(cfg: RunConfig | None, msg: str) -> None:
    """Print a line with train.progress; `cfg` None (ranks other than 0) prints nothing."""
    if cfg is not None and cfg.train.progress:
        print(msg, flush=True)
