"""End-to-end training on real data: logs, checkpoints, early stopping, exact resume after a stop or a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import raw_dir

from ctrscale.train.config import load_config
from ctrscale.train.loop import fit
from ctrscale.train.result import RunResult, StoppedRun


def _cfg(tmp_path, name, *extra):
    return load_config(overrides=[f"name={name}", f"out_dir={tmp_path}", "data.name=ml100k-ctr-v1",
                                  f"data.raw_dir={raw_dir('ml-100k')}", "model.name=mlp", "train.epochs=2",
                                  "train.patience=5", "train.progress=false", "train.threads=2",
                                  "train.checkpoint_every=10", "data.batch_size=2048", *extra])


def test_train_writes_everything_and_learns(tmp_path):
    res = fit(_cfg(tmp_path, "a"))
    run = tmp_path / "a"
    for f in ("config.yaml", "metrics.csv", "results.json", "best.pt", "last.pt", "data_spec.json"):
        assert (run / f).exists(), f
    assert any((run / "tb").iterdir())
    assert res.test["auc"] > 0.70 and res.test["groups_used"] > 100
    assert res.epochs_run == 2 and len(res.epochs) == 2
    assert res.params["dense"] > 0 and res.inference_gflops_per_60 > 0
    saved = json.loads((run / "results.json").read_text())
    assert saved["test"] == res.test and RunResult.read(run / "results.json").to_dict() == saved
    # the saved config is complete: loading it gives the same config back
    assert load_config(run / "config.yaml").to_dict() == _cfg(tmp_path, "a").to_dict()


def _best(run):
    return torch.load(run / "best.pt", weights_only=True)


@pytest.mark.parametrize("window", [0, 4])
def test_stop_and_resume_equals_uninterrupted(tmp_path, window):
    ref = fit(_cfg(tmp_path, "ref", f"data.length_window={window}"))
    stopped = fit(_cfg(tmp_path, "cut", "train.max_steps=17", f"data.length_window={window}"))  # 40 steps/epoch
    assert stopped == StoppedRun(17, tmp_path / "cut")
    res = fit(_cfg(tmp_path, "cut", f"data.length_window={window}"), resume=True)
    assert res.test == ref.test
    for k, v in _best(tmp_path / "ref").items():
        assert torch.equal(v, _best(tmp_path / "cut")[k]), k
    steps = [int(line.split(",")[0]) for line in (tmp_path / "cut" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and len(steps) == len(set(zip(steps)))  # no duplicated rows after resume


def test_killed_process_resumes_to_the_same_result(tmp_path):
    """A real SIGKILL mid-run, then --resume, gives the uninterrupted run's weights and metrics. One thread: with
    two, CPU kernels are not bitwise reproducible from one process to the next (AUC moves by ~3e-6 between two
    uninterrupted runs), which would hide what this test checks."""
    args = ["name=killed", f"out_dir={tmp_path}", "data.name=ml100k-ctr-v1", f"data.raw_dir={raw_dir('ml-100k')}",
            "model.name=mlp", "train.epochs=2", "train.patience=5", "train.progress=false", "train.threads=1",
            "train.checkpoint_every=10", "data.batch_size=2048"]
    cmd = [sys.executable, "-m", "ctrscale.cli", "train", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "results.json").exists()
    subprocess.run(cmd + ["--resume"], env=env, check=True, capture_output=True)
    threads = torch.get_num_threads()
    try:
        ref = fit(_cfg(tmp_path, "ref", "train.threads=1"))
    finally:
        torch.set_num_threads(threads)
    got = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert got["test"] == ref.test
    for k, v in _best(tmp_path / "ref").items():
        assert torch.equal(v, _best(tmp_path / "killed")[k]), k
