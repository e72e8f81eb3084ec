"""The training options peers offer: reduce-on-plateau learning rates and embedding initialisers, against their
definitions, and in a real run."""
from __future__ import annotations

import csv
import shutil
import json

import pytest
import torch
from torch import nn

from ctrscale.cli import main as cli
from ctrscale.models.tables import EmbeddingTable, init_tables
from ctrscale.train.config import OptimSection
from ctrscale.train.optim import make_schedule
from ctrscale.train.runs import load_checkpoint
from model_testkit import build


def _opt():
    return torch.optim.Adam([{"params": [nn.Parameter(torch.zeros(2))], "lr": 1e-3},
                             {"params": [nn.Parameter(torch.zeros(2))], "lr": 2e-5}])


def test_plateau_schedule_scales_every_group_and_floors_at_min_lr():
    scale = {"now": 1.0}
    opt = _opt()
    sched = make_schedule(opt, OptimSection(schedule="plateau", warmup_steps=2, min_lr=1e-5), 100,
                          plateau_scale=lambda: scale["now"])
    lrs = []
    for s in (1.0, 1.0, 1.0, 0.1, 0.01, 1e-4):
        scale["now"] = s
        opt.step()
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    # warm-up for 2 steps (factor 2/2 = 1 from step 1 on), then base * scale, each floored at min(base, 1e-5)
    want = [[1e-3, 2e-5], [1e-3, 2e-5], [1e-4, 1e-5], [1e-5, 1e-5], [1e-5, 1e-5]]
    for got, w in zip(lrs[1:], want):
        assert got == pytest.approx(w, rel=1e-9)
    low = _opt()
    low.param_groups[1]["lr"] = 1e-7                  # a base rate below min_lr is never raised
    sched = make_schedule(low, OptimSection(schedule="plateau", min_lr=1e-5), 10, plateau_scale=lambda: 0.5)
    assert low.param_groups[1]["lr"] == pytest.approx(1e-7)


def test_a_plateau_run_reduces_after_each_epoch_without_a_better_metric(tiny, tmp_path):
    """The lr logged in every training row equals 1e-3 x 0.5^(epochs so far without a new best valid AUC),
    recomputed here from the run's own per-epoch validation AUCs; last.pt keeps the scale for a resume."""
    args = ["train", "name=p", f"out_dir={tmp_path}", f"data.path={tiny.root}", "model.name=mlp",
            "model.embed_dim=4", "train.epochs=4", "train.patience=4", "train.progress=false", "data.max_len=10",
            "data.batch_size=256", "train.log_every=5",
            "optim.schedule=plateau", "optim.plateau_factor=0.5", "optim.lr=0.05", "optim.emb_lr=0.05"]
    assert cli(args) == 0
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    aucs = [e["valid_auc"] for e in res["epochs"]]
    scale, best, per_epoch = 1.0, -1.0, []
    for auc in aucs:
        per_epoch.append(scale)
        if auc > best:
            best = auc
        else:
            scale *= 0.5
    assert scale < 1.0, f"no epoch without improvement ({aucs}): the test needs one"
    with open(tmp_path / "p" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    for r in rows:
        assert float(r["lr"]) == pytest.approx(0.05 * per_epoch[int(r["epoch"])], rel=1e-6), r
    assert {int(r["epoch"]) for r in rows} == set(range(len(aucs)))
    state = load_checkpoint(tmp_path / "p" / "last.pt", weights_only=False)["state"]
    assert state["lr_scale"] == pytest.approx(scale)


@pytest.mark.parametrize("how", ["normal", "xavier_normal", "xavier_uniform"])
def test_embedding_initialisers(tiny, how):
    torch.manual_seed(0)
    model = build(tiny, "din", embed_dim=64)
    tables = [m for m in model.modules() if isinstance(m, EmbeddingTable)]
    assert init_tables(model, how, std=0.003) == len(tables)
    for t in tables:
        w = t.weight.detach()
        assert (w[0] == 0).all()                                            # padding stays zero
        rows, dim = w.shape
        if how == "normal":
            assert w[1:].std().item() == pytest.approx(0.003, rel=0.1)
        elif how == "xavier_uniform":
            bound = (6 / (rows + dim)) ** 0.5
            assert w.abs().max() <= bound and w[1:].abs().max() > 0.8 * bound
        else:
            assert w[1:].std().item() == pytest.approx((2 / (rows + dim)) ** 0.5, rel=0.15)


def test_model_init_keeps_each_models_own(tiny):
    torch.manual_seed(0)
    a = build(tiny, "din")
    torch.manual_seed(0)
    b = build(tiny, "din")
    assert init_tables(b, "model") == 0
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="train.compile on CPU needs a C++ compiler (inductor), none on PATH")
def test_a_compiled_run_trains_as_the_eager_one(tiny, tmp_path):
    """train.compile runs the same steps through inductor's fused kernels: the same losses and test metrics up to
    float reassociation."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        assert cli(["train", f"name={name}", f"out_dir={tmp_path}", f"data.path={tiny.root}", "model.name=din",
                    "model.embed_dim=4", "train.epochs=1", "train.progress=false", "data.max_len=16",
                    "data.batch_size=512", "train.log_every=2", "train.threads=1", *extra]) == 0
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
        with open(tmp_path / name / "metrics.csv") as f:
            runs[name]["losses"] = [float(r["loss"]) for r in csv.DictReader(f) if r["split"] == "train"]
    assert len(runs["eager"]["losses"]) >= 4
    assert runs["compiled"]["losses"] == pytest.approx(runs["eager"]["losses"], rel=1e-4)
    assert runs["compiled"]["test"]["auc"] == pytest.approx(runs["eager"]["test"]["auc"], abs=1e-4)
    assert runs["compiled"]["config"]["train"]["compile"] is True


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_fused_optimizer_equals_the_per_tensor_reference(tiny, optimizer):
    """make_optimizer picks torch's fused Adam(W) kernel; after steps on real batches the weights equal those of
    the plain per-tensor implementation with the same groups (embedding and dense learning rates and decays)."""
    import copy
    from ctrscale.data.loader import Loader, LoaderConfig
    from ctrscale.train.optim import make_optimizer
    o = OptimSection(optimizer=optimizer, lr=3e-3, emb_lr=1e-2, weight_decay=0.01, emb_weight_decay=0.001)
    model = build(tiny, "din", embed_dim=4).train()
    twin = copy.deepcopy(model)
    fast = make_optimizer(model, o)
    assert fast.defaults["fused"]
    ref_groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [dict(twin.named_parameters())[n] for n, p in model.named_parameters()
                              if any(p is q for q in g["params"])]} for g in fast.param_groups]
    for g in ref_groups:
        g.pop("fused", None), g.pop("foreach", None)
    ref = type(fast)(ref_groups, foreach=False)
    batches = Loader(tiny, "train", LoaderConfig(batch_size=128, max_len=10, shuffle=True), seed=0).epoch(0)
    for _, b in zip(range(6), batches):
        for m, opt in ((model, fast), (twin, ref)):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(m(b), b.label).backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
