"""What last.pt holds besides weights, optimizer and schedule: the run's progress (RunState) and every RNG state, so
that a resumed run continues exactly where the uninterrupted one would be; and the checks a resume must pass."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import RunError


@dataclass
class RunState:
    """The progress of a run, saved in last.pt as a plain dict (`to_dict`) under "state"."""
    epoch: int = 0                   # epochs finished
    step_in_epoch: int = 0           # optimizer steps taken in the current epoch
    step: int = 0                    # optimizer steps taken in the run (skipped non-finite steps included)
    best: float = -1.0               # the best validation metric so far (train.early_stop_metric)
    best_epoch: int = -1             # 1-based; -1 before the first validation
    bad_epochs: int = 0              # epochs since the best one
    epochs: list[dict] = field(default_factory=list)  # per epoch: {"epoch", "step", "valid_<metric>": ...}
    train_seconds: float = 0.0
    impressions: int = 0             # training impressions seen, over all ranks
    done: bool = False               # early-stopped, or every epoch run
    skipped_steps: int = 0           # non-finite steps skipped (train.skip_nonfinite_steps)
    data_fingerprint: str | None = None  # of the prepared data the run started on
    precision: str = "fp32"          # the arithmetic the run started with (bf16 | fp32)
    lr_scale: float = 1.0            # optim.schedule=plateau: the product of the reductions so far

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict, fresh: "RunState") -> "RunState":
        """The state a last.pt saved (a dict, the same keys in checkpoints written before RunState existed) over
        `fresh`: keys added since the checkpoint was written keep fresh's values; keys no longer used are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return dataclasses.replace(fresh, **{k: v for k, v in saved.items() if k in known})


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def check_same_data_and_precision(last: Path, saved: RunState, now: RunState) -> None:
    """A resume must see the data and arithmetic the run started with: the same preparation (its fingerprint; a
    folder prepared again from other inputs differs) and the same precision (`auto` follows the device). A value
    the checkpoint did not record (an older last.pt) is not checked."""
    for key, what in (("data_fingerprint", "prepared data (the fingerprint in its meta.json)"),
                      ("precision", "precision (train.precision=auto is bf16 on a GPU, fp32 on a CPU)")):
        was, is_now = getattr(saved, key), getattr(now, key)
        if was is not None and was != is_now:
            raise RunError(f"{last}: the run started with other {what}: {was!r} -> {is_now!r}; resume "
                           f"with the run's own data and device (or train.precision), or start a new run")


def refuse_nonfinite(state: dict, where: str) -> None:
    """Never write a checkpoint holding NaN or infinite weights (the divergence check should stop a run first)."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"{where}: not saved: the weights {bad[:3]} hold non-finite values (the model diverged); "
                       f"train again with a lower optim.lr")
