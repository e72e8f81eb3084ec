"""results.json as a typed RunResult: the files runs have written load, and write back with the same keys and
values; optional keys default, unknown keys are kept, and a file that is not a run's results is one clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctrscale.errors import RunError
from ctrscale.train.result import RunResult

RECORDED = sorted((Path(__file__).resolve().parents[1] / "results").rglob("results.json"))


def test_recorded_results_load_and_write_back_unchanged(tmp_path):
    runs = [f for f in RECORDED if isinstance(json.loads(f.read_text()), dict)]  # a demo's results.json is a list
    assert runs, "results/ holds recorded runs"
    for f in runs:
        res = RunResult.read(f)
        res.write(tmp_path / "results.json")
        assert (tmp_path / "results.json").read_text() == json.dumps(json.loads(f.read_text()), indent=1), f


def _minimal() -> dict:
    """The keys every ctrscale run has written (runs of older versions lack the optional ones)."""
    return {"name": "r", "model": "din", "dataset": "synthetic", "max_len": 10, "seed": 0, "best_epoch": 1,
            "epochs_run": 1, "valid": {"auc": 0.6}, "test": {"auc": 0.61, "logloss": 0.6},
            "epochs": [{"epoch": 1, "step": 3, "valid_auc": 0.6}], "params": {"dense": 5, "embedding": 7},
            "inference_gflops_per_60": 0.1, "train_flops_per_impression": 2.0e3, "train_seconds": 1.5,
            "config": {"name": "r"}}


def test_older_and_newer_files_load(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**_minimal(), "note": "added by a later version"}))
    res = RunResult.read(path)
    assert res.train_impressions is None and res.row_sharded is None
    assert res.extra == {"note": "added by a later version"}
    written = res.to_dict()
    assert written["note"] == "added by a later version"
    assert "row_sharded" not in written and "teacher_test" not in written
    assert written["distilled_from"] is None  # written as runs always wrote it


@pytest.mark.parametrize("text, needle", [
    ('{"my": "numbers"}', "missing key(s)"),
    ("[1, 2]", "expected a mapping"),
    ("{not json", "JSONDecodeError"),
])
def test_a_file_that_is_not_a_runs_results_is_one_clear_error(tmp_path, text, needle):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(RunError, match=str(path)) as e:
        RunResult.read(path)
    assert needle in str(e.value) and "\n" not in str(e.value)
