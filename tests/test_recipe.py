"""End-to-end training on real data: logs, checkpoints, early stopping, exact resume after a kill."""
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
from ctrscale.train.recipe import fit
from ctrscale.typed import ConfigError


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
    assert res["test"]["auc"] > 0.70 and res["test"]["groups_used"] > 100
    assert res["epochs_run"] == 2 and len(res["epochs"]) == 2
    assert res["params"]["dense"] > 0 and res["inference_gflops_per_60"] > 0
    # the saved config is complete: loading it gives the same config back
    assert load_config(run / "config.yaml").to_dict() == _cfg(tmp_path, "a").to_dict()


def _best(run):
    return torch.load(run / "best.pt", weights_only=True)


@pytest.mark.parametrize("window", [0, 4])
def test_stop_and_resume_equals_uninterrupted(tmp_path, window):
    ref = fit(_cfg(tmp_path, "ref", f"data.length_window={window}"))
    stopped = fit(_cfg(tmp_path, "cut", "train.max_steps=17", f"data.length_window={window}"))  # 40 steps/epoch
    assert stopped["stopped_at_step"] == 17
    res = fit(_cfg(tmp_path, "cut", f"data.length_window={window}"), resume=True)
    assert res["test"] == ref["test"]
    for k, v in _best(tmp_path / "ref").items():
        assert torch.equal(v, _best(tmp_path / "cut")[k]), k
    steps = [int(line.split(",")[0]) for line in (tmp_path / "cut" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and len(steps) == len(set(zip(steps)))  # no duplicated rows after resume


def test_killed_process_resumes_to_the_same_result(tmp_path):
    """A real SIGKILL mid-run, then --resume, gives the uninterrupted run's weights and metrics."""
    args = ["name=killed", f"out_dir={tmp_path}", "data.name=ml100k-ctr-v1", f"data.raw_dir={raw_dir('ml-100k')}",
            "model.name=mlp", "train.epochs=2", "train.patience=5", "train.progress=false", "train.threads=2",
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
    ref = fit(_cfg(tmp_path, "ref"))
    got = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert got["test"] == ref["test"]
    for k, v in _best(tmp_path / "ref").items():
        assert torch.equal(v, _best(tmp_path / "killed")[k]), k


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="epochz"):
        load_config(overrides=["train.epochz=2"])
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(overrides=["optim.optimizer=sgd"])


def test_predict_in_length_order_returns_rows_in_stored_order(tiny):
    from ctrscale.data.loader import Loader, LoaderConfig
    from ctrscale.models.registry import build_model
    from ctrscale.train.recipe import predict
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "din"}).eval()
    got = predict(model, tiny, "valid", max_len=30, batch_size=64, device=torch.device("cpu"))
    plain = Loader(tiny, "valid", LoaderConfig(batch_size=64, max_len=30, shuffle=False, trim=False))
    with torch.no_grad():
        batches = list(plain.epoch(0))
        ref = torch.sigmoid(torch.cat([model(b) for b in batches])).numpy()
    torch.testing.assert_close(torch.from_numpy(got["prob"]), torch.from_numpy(ref), rtol=1e-5, atol=1e-6)
    assert (got["user"] == torch.cat([b.user for b in batches]).numpy()).all()
    assert (got["label"] == torch.cat([b.label for b in batches]).numpy()).all()


@pytest.mark.parametrize("listwise", [False, True])
def test_gradient_accumulation_equals_one_batch(tiny, listwise):
    """train.grad_accum splits a batch into micro-batches (whole requests when listwise) weighted by their share
    of impressions: the same loss and gradients as the whole batch."""
    from contextlib import nullcontext

    from ctrscale.data.loader import Loader, LoaderConfig
    from ctrscale.models.registry import build_model
    from ctrscale.train.recipe import accumulate_gradients
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "sparsectr" if listwise else "din"})
    batch = next(iter(Loader(tiny, "train", LoaderConfig(batch_size=96, max_len=20, listwise=listwise), seed=1)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if listwise:
        step = lambda b: bce(model.score_request(b)[b.mask], b.label[b.mask])  # noqa: E731
    else:
        step = lambda b: bce(model(b), b.label)  # noqa: E731
    grads = []
    for parts in (1, 3):
        model.zero_grad()
        loss = accumulate_gradients(step, batch, parts, nullcontext())
        grads.append((loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
