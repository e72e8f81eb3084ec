"""The run state kept in last.pt: a plain dict with the keys checkpoints have always held, restored over a fresh
state so that keys added since a checkpoint was written keep their defaults."""
from __future__ import annotations

import pytest

from ctrscale.errors import RunError
from ctrscale.train.state import RunState, check_same_data_and_precision

OLD_KEYS = ["epoch", "step_in_epoch", "step", "best", "best_epoch", "bad_epochs", "epochs", "train_seconds",
            "impressions", "done", "skipped_steps", "data_fingerprint", "precision", "lr_scale"]  # new keys last


def test_saved_as_the_dict_checkpoints_have_always_held():
    assert list(RunState().to_dict()) == OLD_KEYS


def test_an_older_checkpoints_state_restores_over_a_fresh_one():
    fresh = RunState(data_fingerprint="abc", precision="fp32")
    old = {"epoch": 1, "step_in_epoch": 0, "step": 40, "best": 0.71, "best_epoch": 1, "bad_epochs": 0,
           "epochs": [{"epoch": 1, "step": 40, "valid_auc": 0.71}], "train_seconds": 3.0, "impressions": 800,
           "done": False, "retired_key": 1}  # written before skipped_steps, data_fingerprint and precision
    state = RunState.from_dict(old, fresh)
    assert (state.step, state.best, state.epochs) == (40, 0.71, old["epochs"])
    assert (state.skipped_steps, state.data_fingerprint, state.precision) == (0, "abc", "fp32")
    check_same_data_and_precision("last.pt", state, fresh)  # nothing recorded to differ


def test_a_resume_on_other_data_or_precision_is_refused():
    now = RunState(data_fingerprint="abc", precision="fp32")
    for saved, needle in ((RunState(data_fingerprint="xyz", precision="fp32"), "prepared data"),
                          (RunState(data_fingerprint="abc", precision="bf16"), "precision")):
        with pytest.raises(RunError, match=needle):
            check_same_data_and_precision("last.pt", saved, now)
