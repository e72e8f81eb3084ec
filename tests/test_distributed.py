"""Data-parallel training under torchrun (gloo, 2 CPU processes) against one process."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ctrscale.cli import main
from ctrscale.data import catalog
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.data.loader import shard
from ctrscale.train.distributed import World
from ctrscale.train.inference import load_trained, predict

OPTIONS = "{impressions: 20000, n_users: 1500, n_items: 400}"
COMMON = ["data.name=synthetic", f"data.options={OPTIONS}", "data.max_len=20", "data.batch_size=512",
          "train.epochs=2", "train.patience=2", "train.progress=false", "train.threads=1", "model.name=din",
          "train.checkpoint_every=10"]


def test_shards_partition_every_global_batch(tiny):
    for listwise in (False, True):
        loader = Loader(tiny, "train", LoaderConfig(batch_size=100, max_len=5, listwise=listwise), seed=3)
        plan = loader.plan(1)
        parts = [list(loader.epoch(1, world=World(r, 3))) for r in range(3)]
        req = tiny.split("train").column("request")
        for step, rows in enumerate(plan):
            mine = [shard(rows, World(r, 3), req[rows] if listwise else None) for r in range(3)]
            assert sorted(np.concatenate(mine)) == sorted(rows)                 # exactly once, no row lost
            if listwise:                                                          # a request never straddles
                assert not set(req[mine[0]]) & set(req[mine[1]]) and not set(req[mine[1]]) & set(req[mine[2]])
            for r in range(3):
                got = parts[r][step]
                assert (got is None and len(mine[r]) == 0) or len(got) == len(mine[r])


def _torchrun(args: list[str], nproc: int = 2) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ctrscale.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run in one process, in two (gloo), and two processes stopped mid-run then resumed in one."""
    import os
    home = tmp_path_factory.mktemp("home")
    os.environ["CTRSCALE_HOME"] = str(home)           # shared by every process below
    out = tmp_path_factory.mktemp("runs")
    _torchrun(["train", "name=two", f"out_dir={out}", *COMMON])   # rank 0 prepares the data, rank 1 waits for it
    assert catalog.prepare("synthetic", impressions=20000, n_users=1500, n_items=400)[1] is None
    assert main(["train", "name=one", f"out_dir={out}", *COMMON]) == 0
    _torchrun(["train", "name=moved", f"out_dir={out}", *COMMON, "train.max_steps=25"])
    assert not (out / "moved" / "results.json").exists()
    assert main(["train", "--resume", "name=moved", f"out_dir={out}", *COMMON]) == 0
    return {k: json.loads((out / k / "results.json").read_text()) | {"dir": out / k} for k in ("one", "two", "moved")}


def test_two_processes_train_to_the_metrics_of_one(runs):
    one, two = runs["one"], runs["two"]
    assert two["epochs_run"] == one["epochs_run"] and two["train_impressions"] == one["train_impressions"]
    for k in ("auc", "gauc", "logloss"):
        assert abs(two["test"][k] - one["test"][k]) < 1e-4, (k, one["test"][k], two["test"][k])
    # the same global batches and equal gradients: the weights agree to float reduction order
    w1 = torch.load(runs["one"]["dir"] / "best.pt", weights_only=True)
    w2 = torch.load(runs["two"]["dir"] / "best.pt", weights_only=True)
    assert max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1) < 5e-3


def test_distributed_evaluation_equals_one_process_on_the_same_weights(runs):
    """The 2-process run's test predictions (gathered from both ranks) against this process scoring its
    best.pt alone: the same probabilities, hence the same AUC/GAUC/logloss."""
    cfg, data, model, device = load_trained(runs["two"]["dir"])
    alone = predict(model, data, "test", 20, cfg.data.eval_batch_size, device)
    gathered = np.load(runs["two"]["dir"] / "test_predictions.npz")
    np.testing.assert_allclose(gathered["prob"], alone["prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gathered["label"], alone["label"])
    np.testing.assert_array_equal(gathered["user"], alone["user"])
    from ctrscale import metrics
    m = metrics.evaluate(alone["label"], alone["prob"], alone["user"])
    assert m["auc"] == pytest.approx(runs["two"]["test"]["auc"], abs=1e-6)
    assert m["gauc"] == pytest.approx(runs["two"]["test"]["gauc"], abs=1e-6)


def test_a_run_resumes_under_another_world_size(runs):
    one, moved = runs["one"], runs["moved"]
    assert moved["epochs_run"] == one["epochs_run"]
    for k in ("auc", "gauc"):
        assert abs(moved["test"][k] - one["test"][k]) < 1e-4, (k, one["test"][k], moved["test"][k])
