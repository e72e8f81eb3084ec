"""benchmarks/feature_groups.py on runs written here: each group's Δ is full minus dropped, the AUC difference
checked against scipy's Mann-Whitney U, rows aligned by their id whatever order each run saved them in."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, name: str, prob: np.ndarray, label: np.ndarray, user: np.ndarray, perm) -> None:
    run = folder / name
    run.mkdir(parents=True)
    row = np.arange(len(label))
    np.savez(run / "test_predictions.npz", row=row[perm], prob=prob[perm], label=label[perm], user=user[perm],
             request=row[perm])
    (run / "results.json").write_text(json.dumps({"test": {"auc": 0.0, "gauc": 0.0}}))


def mw_auc(label, prob):
    return stats.mannwhitneyu(prob[label == 1], prob[label == 0]).statistic / ((label == 1).sum() * (label == 0).sum())


def test_deltas_are_full_minus_dropped(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    label = rng.integers(0, 2, n)
    user = rng.integers(0, 40, n)
    full = 1 / (1 + np.exp(-(1.5 * label + rng.normal(size=n))))
    worse = 1 / (1 + np.exp(-(0.5 * label + rng.normal(size=n))))
    write_run(tmp_path, "m-full-s0", full, label, user, rng.permutation(n))
    write_run(tmp_path, "m-norating-s0", worse, label, user, rng.permutation(n))
    out = tmp_path / "groups.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "feature_groups.py"), str(tmp_path), "--models", "m",
                    "gone", "--out", str(out)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, cwd=ROOT / "benchmarks")
    record = json.loads(out.with_suffix(".json").read_text())
    assert list(record) == ["m"]  # a model without a full run is skipped (and said so)
    d = record["m"]["the history rating"]["auc"]
    assert d["diff"] == pytest.approx(mw_auc(label, full) - mw_auc(label, worse), abs=1e-12)
    assert d["ci95"][0] > 0  # a large, real difference: its interval excludes zero
    assert "hour and weekday" not in record["m"]  # no such run: an empty cell, not a number
