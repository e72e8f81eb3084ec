"""Online distillation: the loss, and a run whose student is saved and served alone."""
from __future__ import annotations

import json

import torch

from ctrscale.cli import main
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model
from ctrscale.train.config import load_config
from ctrscale.train.inference import evaluate
from ctrscale.train.objective import distill_loss


def test_distill_loss_is_the_papers_sum_and_teacher_soft_label_is_detached():
    torch.manual_seed(0)
    zs, zt = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    y = (torch.rand(8) > 0.5).float()
    t = 2.0
    loss = distill_loss(zs, zt, y, t, weight=t)
    ps, pt, pst, ptt = torch.sigmoid(zs), torch.sigmoid(zt), torch.sigmoid(zs / t), torch.sigmoid(zt / t)
    bce = lambda p, q: -(q * torch.log(p) + (1 - q) * torch.log(1 - p)).mean()  # noqa: E731
    ref = bce(ps, y) + bce(pt, y) + t * bce(pst, ptt.detach())
    torch.testing.assert_close(loss, ref)
    zt_only = torch.autograd.grad(distill_loss(zs, zt, y, t, t), zt)[0]
    plain = torch.autograd.grad(torch.nn.functional.binary_cross_entropy_with_logits(zt, y), zt)[0]
    torch.testing.assert_close(zt_only, plain)  # the teacher learns from the labels only


def test_distill_run_saves_a_student_that_serves_alone(tiny, tmp_path, capsys):
    args = ["distill", "--teacher", "{name: suan, embed_dim: 8, layers: 2, head_hidden: [32]}",
            "--student", "{name: lightsuan, embed_dim: 4, layers: 1, heads: 1, head_hidden: [16]}",
            f"data.path={tiny.root}", "data.max_len=8", "distill.teacher_max_len=24", "name=d",
            f"out_dir={tmp_path}", "train.epochs=1", "train.progress=false", "data.batch_size=256"]
    assert main(args) == 0
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    assert res["distilled_from"]["name"] == "suan" and res["model"] == "lightsuan" and "teacher_test" in res
    cfg = load_config(tmp_path / "d" / "config.yaml")
    student = build_model(tiny.spec, cfg.model)
    student.load_state_dict(torch.load(tmp_path / "d" / "best.pt", weights_only=True))  # student weights only
    m = evaluate(student, tiny, "test", 8, 4096, torch.device("cpu"))
    assert m["auc"] == res["test"]["auc"]
    teacher = build_model(tiny.spec, cfg.distill.teacher)
    teacher.load_state_dict(torch.load(tmp_path / "d" / "teacher.pt", weights_only=True))
    b = next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=60, max_len=8))))
    from ctrscale.accounting import inference_flops
    plain = build_model(tiny.spec, cfg.model)
    assert inference_flops(student, b) == inference_flops(plain, b)  # same serving cost as an undistilled one


def test_eval_reads_the_student_from_either_checkpoint(tiny, tmp_path, capsys):
    args = ["distill", "--teacher", "{name: suan, embed_dim: 4, layers: 1, heads: 1, head_hidden: [8]}",
            "--student", "{name: mlp, embed_dim: 4, hidden: [8]}", f"data.path={tiny.root}", "data.max_len=6",
            "name=e", f"out_dir={tmp_path}", "train.epochs=1", "train.progress=false", "data.batch_size=512"]
    assert main(args) == 0
    capsys.readouterr()
    aucs = []
    for ck in ("best", "last"):
        assert main(["eval", str(tmp_path / "e"), "--checkpoint", ck]) == 0
        aucs.append(json.loads(capsys.readouterr().out)["auc"])
    assert aucs[0] == aucs[1] == json.loads((tmp_path / "e" / "results.json").read_text())["test"]["auc"]
