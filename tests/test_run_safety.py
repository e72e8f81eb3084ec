"""Run folders are never mixed, overwritten or corrupted: the real CLI in a subprocess, on a small synthetic set.

Every refusal is one line on stderr with exit code 2 and no traceback; what the refused command would have
damaged is checked to be unchanged."""
from __future__ import annotations

import hashlib
import json
import shutil
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrscale.errors import RunError
from ctrscale.train.runs import config_drift, load_checkpoint, save_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


def cli(*args, cwd=None, wait=True):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ctrscale.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def refused(rc, err, *needles):
    """Exit 2, one line on stderr naming every needle, no traceback."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def train_args(tiny, out, name="r", *extra):
    return ["train", f"name={name}", f"out_dir={out}", f"data.path={tiny.root}", "model.name=din",
            "model.embed_dim=4", "data.max_len=10", "data.batch_size=512", "train.epochs=1", "train.progress=false",
            "train.checkpoint_every=3", *extra]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    rc, _, err = cli(*train_args(tiny, out))
    assert rc == 0, err
    return out


def test_resume_with_another_config_is_refused_naming_the_key(tiny, finished, tmp_path):
    run = tmp_path / "r"
    rc, _, err = cli(*train_args(tiny, tmp_path, "r", "train.max_steps=4"))
    assert rc == 0 and (run / "last.pt").exists() and not (run / "results.json").exists(), err
    before = digest(run)
    line = refused(*cli(*train_args(tiny, tmp_path, "r", "optim.lr=0.5"), "--resume")[::2],
                   "optim.lr: 0.001 -> 0.5", "last.pt")
    assert "another config" in line
    refused(*cli(*train_args(tiny, tmp_path, "r", "model.embed_dim=8"), "--resume")[::2], "model.embed_dim: 4 -> 8")
    refused(*cli(*train_args(tiny, tmp_path, "r", "train.seed=1", "data.batch_size=256"), "--resume")[::2],
            "train.seed: 0 -> 1", "data.batch_size: 512 -> 256")
    assert digest(run) == before  # nothing was written by the refused resumes
    rc, out, err = cli(*train_args(tiny, tmp_path, "r", "train.threads=1", "train.log_every=7"), "--resume")
    assert rc == 0 and "test AUC" in out, err  # threads and logging may change


def test_a_finished_run_is_not_overwritten_without_a_flag(tiny, finished, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(finished / "r", run)
    before = digest(run)
    refused(*cli(*train_args(tiny, tmp_path, "r", "optim.lr=0.01"))[::2], "finished run", "--resume", "--overwrite")
    assert digest(run) == before
    (run / "notes.txt").write_text("mine")
    rc, _, err = cli(*train_args(tiny, tmp_path, "r", "train.seed=5"), "--overwrite")
    assert rc == 0, err
    assert json.loads((run / "results.json").read_text())["seed"] == 5
    assert (run / "notes.txt").read_text() == "mine"  # --overwrite replaces ctrscale's files only


def test_resume_of_a_finished_run_without_its_checkpoint(tiny, finished, tmp_path):
    """Run records kept without checkpoints (results/ holds such): --resume returns them under the same config and
    refuses another one; nothing is retrained or overwritten."""
    run = tmp_path / "r"
    shutil.copytree(finished / "r", run)
    for f in ("last.pt", "last.pt.sha256", "best.pt", "best.pt.sha256"):
        (run / f).unlink()
    before = digest(run)
    rc, out, err = cli(*train_args(tiny, tmp_path, "r", "train.threads=1"), "--resume")
    assert rc == 0 and "test AUC" in out and "epoch 1:" not in out, err
    refused(*cli(*train_args(tiny, tmp_path, "r", "model.embed_dim=8"), "--resume")[::2], "model.embed_dim: 4 -> 8")
    assert digest(run) == before


def test_overwrite_touches_only_a_run_ctrscale_wrote(tiny, tmp_path):
    mine = tmp_path / "mine"
    (mine / "analysis").mkdir(parents=True)
    (mine / "results.json").write_text('{"my": "numbers"}')
    (mine / "analysis" / "paper.md").write_text("mine")
    before = digest(mine)
    refused(*cli(*train_args(tiny, tmp_path, "mine"), "--overwrite")[::2], "no run config written by")
    refused(*cli(*train_args(tiny, tmp_path, "../escape"))[::2], "name:", "'..'")
    assert digest(mine) == before and not (tmp_path.parent / "escape").exists()


def test_two_trainings_into_one_folder(tiny, tmp_path):
    first = cli(*train_args(tiny, tmp_path, "r", "train.epochs=200", "train.patience=200"), wait=False)
    lock = tmp_path / "r" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.2)
    try:
        assert first.poll() is None, first.communicate()
        line = refused(*cli(*train_args(tiny, tmp_path, "r", "train.epochs=200", "train.patience=200"),
                            "--resume")[::2], f"pid {first.pid}")
        assert "another training" in line
    finally:
        first.kill()
        first.communicate()
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert all(r.count(",") == rows[0].count(",") for r in rows)  # one writer: no interleaved rows


def test_divergence_stops_at_the_first_non_finite_step(tiny, tmp_path):
    line = refused(*cli(*train_args(tiny, tmp_path, "r", "optim.lr=1e30", "optim.emb_lr=1e30", "optim.grad_clip=0",
                                    "train.checkpoint_every=1"))[::2], "training diverged", "learning rate",
                   "optim.lr")
    step = int(re.search(r"non-finite training step (\d+)", line).group(1))
    assert "gradient norm" in line and f"last.pt keeps the state of step {step - 1}" in line
    state = load_checkpoint(tmp_path / "r" / "last.pt")  # the last good step, finite
    assert state["state"]["step"] == step - 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    rc, out, err = cli(*train_args(tiny, tmp_path, "s", "optim.lr=1e30", "optim.emb_lr=1e30", "optim.grad_clip=0",
                                   "train.skip_nonfinite_steps=2", "train.progress=true"))
    refused(rc, err, "training diverged")
    assert out.count("skipped non-finite training step") == 2


def test_damaged_checkpoints_are_named(tiny, tmp_path):
    rc, _, err = cli(*train_args(tiny, tmp_path, "r", "train.max_steps=4"))
    assert rc == 0, err
    last = tmp_path / "r" / "last.pt"
    good = last.read_bytes()
    rng = np.random.default_rng(0)
    flipped = bytearray(good)
    for i in rng.choice(len(good), 64, replace=False):
        flipped[i] ^= 0xFF
    for damaged in (bytes(flipped), good[: len(good) // 2], b"not a checkpoint at all"):
        last.write_bytes(damaged)
        refused(*cli(*train_args(tiny, tmp_path, "r"), "--resume")[::2], str(last), "damaged")
    last.write_bytes(good)
    rc, _, err = cli(*train_args(tiny, tmp_path, "r"), "--resume")
    assert rc == 0, err


def test_checkpoint_checksum_survives_a_crash_before_the_rename(tmp_path):
    """The sidecar keeps the digest of the file still in place, so a save interrupted after the sidecar is
    written leaves a checkpoint that still verifies; a checkpoint without a sidecar is checked by its zip CRCs."""
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.ones(3)}, path)
    old = path.read_bytes()
    save_checkpoint({"w": torch.zeros(3)}, path)
    path.write_bytes(old)  # as if the rename of the second save never happened
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(4096.0)}, legacy)
    assert load_checkpoint(legacy)["w"].sum() == torch.arange(4096.0).sum()
    data = bytearray(legacy.read_bytes())
    start = data.find(b"\x00\x00\x80\x3f")  # 1.0 in float32, inside the tensor record
    data[start:start + 4] = b"\x00\x00\x80\x7f"
    legacy.write_bytes(bytes(data))
    with pytest.raises(RunError, match="legacy.pt.*CRC"):
        load_checkpoint(legacy)


def test_eval_without_best_points_to_the_last_checkpoint(tiny, tmp_path):
    rc, _, err = cli(*train_args(tiny, tmp_path, "r", "train.max_steps=2"))
    assert rc == 0, err
    refused(*cli("eval", tmp_path / "r")[::2], "no best.pt", "--checkpoint last")
    rc, out, err = cli("eval", tmp_path / "r", "--checkpoint", "last")
    assert rc == 0 and "auc" in json.loads(out), err
    refused(*cli("eval", tmp_path / "nothing")[::2], "not a run folder")


def test_compare_reuses_a_run_only_under_the_same_config(tiny, tmp_path):
    base = ["compare", "--data", "synthetic", "--models", "din", "--seeds", "0", "--out", tmp_path,
            f"data.path={tiny.root}", "train.epochs=1", "data.max_len=10", "data.batch_size=512",
            "model.embed_dim=4"]
    rc, out, err = cli(*base)
    assert rc == 0, err
    before = digest(tmp_path / "din-s0")
    refused(*cli(*base, "optim.lr=0.5")[::2], "optim.lr: 0.001 -> 0.5", "din-s0", "another --out")
    refused(*cli(*[a if a != "synthetic" else "ml100k-ctr-v1" for a in base])[::2],
            "data.name: 'synthetic' -> 'ml100k-ctr-v1'")
    assert digest(tmp_path / "din-s0") == before
    rc, again, err = cli(*base, "train.threads=1")
    row = lambda text: next(x for x in text.splitlines() if x.startswith("| din |"))  # noqa: E731
    assert rc == 0 and row(again) == row(out) and "epoch 1:" not in again, err  # reused, not trained again


def test_training_refuses_a_validation_split_of_one_class(tmp_path):
    from test_generic_prepare import make_rows, write_csv, write_schema
    rows = make_rows()
    for r in rows:
        if r["fold"] == "valid":
            r["clicked"] = "0"
    csv = write_csv(tmp_path / "data.csv", rows)
    rc, out, err = cli("data", "prepare", "--schema", write_schema(tmp_path), "--input", csv, "--out",
                       tmp_path / "prep", "--split", "fold")
    assert rc == 0, err
    refused(*cli("train", f"out_dir={tmp_path}", f"data.path={tmp_path / 'prep'}", "model.name=mlp",
                 "train.progress=false")[::2], "valid split has only label 0", "AUC is undefined")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_drift_ignores_only_what_does_not_change_the_experiment():
    a = {"name": "a", "model": {"name": "din"}, "train": {"threads": 0, "seed": 0}, "data": {"options": {}}}
    b = {"name": "b", "model": {"name": "din", "embed_dim": 16}, "train": {"threads": 2, "seed": 0},
         "data": {"options": {"n_users": 5}}}
    from ctrscale.models.registry import default_config
    assert default_config("din")["embed_dim"] == 16  # an explicit default equals an implicit one
    assert config_drift(a, b) == ["data.options: {} -> {'n_users': 5}"]
    b["model"]["embed_dim"] = 8
    assert config_drift(a, b)[1] == "model.embed_dim: 16 -> 8"


def test_a_run_refused_at_its_start_leaves_no_folder(tiny, tmp_path):
    """An error found after the lock was taken (the data's fields are read inside the run) removes the folder the
    lock created, so a fixed command does not meet an empty leftover; a folder that was there stays."""
    refused(*cli(*train_args(tiny, tmp_path, "r", "data.fields=[nope]"))[::2], "nope")
    assert not (tmp_path / "r").exists()
    (tmp_path / "kept").mkdir()
    refused(*cli(*train_args(tiny, tmp_path, "kept", "data.fields=[nope]"))[::2], "nope")
    assert (tmp_path / "kept").is_dir()
