"""The command line, end to end on small data."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import raw_dir

from ctrscale.cli import main


def test_ls_prints_the_registry(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "mlp" in out and "din" in out


def test_ls_index_matches_the_registry():
    # `ls` reads the static index; it must say what the registry (the imported models) says
    from ctrscale.models.index import MODELS
    from ctrscale.models.registry import entries
    real = {n: (e.model.__module__.removeprefix("ctrscale.models."), e.summary) for n, e in entries().items()}
    assert MODELS == real, "update src/ctrscale/models/index.py to match the models' @register lines"


def test_ls_imports_no_torch():
    code = ("import sys; from ctrscale.cli import main; assert main(['ls']) == 0; "
            "assert 'torch' not in sys.modules, 'ls imported torch'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mlp " in done.stdout


def test_prepare_twice_is_a_noop(tmp_path, capsys):
    args = ["data", "prepare", "ml100k-ctr-v1", "--raw-dir", str(raw_dir("ml-100k")), "--out", str(tmp_path / "d")]
    assert main(args) == 0
    assert "80,000" in capsys.readouterr().out
    assert main(args) == 0
    assert "already prepared" in capsys.readouterr().out


def test_train_then_eval(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: t\nout_dir: {tmp_path}\nmodel: {{name: din, embed_dim: 8}}\n"
                   f"data: {{name: ml100k-ctr-v1, raw_dir: {raw_dir('ml-100k')}, batch_size: 2048}}\n"
                   "train: {epochs: 1, progress: false}\n")
    assert main(["train", "--config", str(cfg), "train.seed=3"]) == 0
    assert "test AUC" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "t"), "--split", "test"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    assert metrics["auc"] == saved["test"]["auc"] and saved["config"]["train"]["seed"] == 3


def test_prepare_any_csv_with_a_schema(tmp_path, capsys):
    from test_generic_prepare import make_rows, write_csv, write_schema
    rows = make_rows()
    rows[3]["clicked"] = "7"
    csv = write_csv(tmp_path / "data.csv", rows)
    base = ["data", "prepare", "--schema", str(write_schema(tmp_path)), "--input", str(csv),
            "--out", str(tmp_path / "out")]
    assert main(base) == 2  # a bad row: one line on stderr, exit 2
    assert re.match(r"ctrscale data: error: .*data\.csv: row 4 \(line 5\): field 'clicked'", capsys.readouterr().err)
    assert main(base + ["--on-bad-row", "skip"]) == 0
    out = capsys.readouterr().out
    assert "label not 0/1: 1" in out and "prepared into" in out


def test_compare_two_models_over_two_seeds(tiny, tmp_path, capsys):
    # overrides may stand anywhere, even right after --seeds
    args = ["compare", "--data", "synthetic", "--models", "mlp", "din", "din-d4:model.embed_dim=4", "--seeds", "0", "1",
            "train.epochs=1", "--out", str(tmp_path), f"data.path={tiny.root}", "data.max_len=10",
            "data.batch_size=512"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"== din-d4, seed 1 ({tmp_path}/din-d4-s1)" in printed
    assert f"comparison written to {tmp_path}/comparison.md" in printed
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["seed"] for r in report["runs"]["din"]] == [0, 1]
    test = report["tests"]["din - mlp"]
    aucs = lambda m: [r["test"]["auc"] for r in report["runs"][m]]  # noqa: E731
    assert abs(test["auc_seeds"]["mean_diff"] - (sum(aucs("din")) - sum(aucs("mlp"))) / 2) < 1e-12
    assert test["bootstrap_users"]["auc"]["ci95"][0] <= test["bootstrap_users"]["auc"]["ci95"][1]
    assert "din − mlp" in (tmp_path / "comparison.md").read_text()
    for model, rows in report["valid_by_epoch"].items():  # per-epoch validation means, recomputed from each run
        runs = [json.loads((tmp_path / f"{model}-s{s}" / "results.json").read_text())["epochs"] for s in (0, 1)]
        assert [r["epoch"] for r in rows] == [1] and rows[0]["seeds"] == 2
        assert rows[0]["valid_gauc"] == pytest.approx((runs[0][0]["valid_gauc"] + runs[1][0]["valid_gauc"]) / 2)
    assert (tmp_path / "valid_by_epoch.png").stat().st_size > 0
    variant = json.loads((tmp_path / "din-d4-s1" / "results.json").read_text())["config"]
    # the saved model section is resolved (every key written): the variant's own setting is among them
    assert variant["model"]["name"] == "din" and variant["model"]["embed_dim"] == 4 and variant["train"]["seed"] == 1
    assert main(args) == 0  # finished runs are reused, not retrained


def test_compare_cell_shows_spread_only_over_seeds():
    import statistics

    from ctrscale.compare import _mean_std
    assert _mean_std([0.78125]) == "0.7812"  # one seed: no "± 0.0000" pretending to be a spread
    xs = [0.781, 0.785, 0.790]
    assert _mean_std(xs) == f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def test_compare_epoch_means_follow_seeds_that_stopped_early():
    from ctrscale.compare import epoch_means
    ep = lambda e, auc, gauc: {"epoch": e, "valid_auc": auc, "valid_gauc": gauc}  # noqa: E731
    rows = epoch_means([[ep(1, 0.70, 0.60), ep(2, 0.74, 0.62)],
                        [ep(1, 0.72, 0.64), ep(2, 0.76, 0.66), ep(3, 0.78, 0.70)]])
    assert [(r["epoch"], r["seeds"]) for r in rows] == [(1, 2), (2, 2), (3, 1)]
    assert rows[1]["valid_auc"] == pytest.approx(0.75) and rows[2]["valid_gauc"] == pytest.approx(0.70)


def test_compare_model_entries():
    from ctrscale.compare import parse_model_entry
    assert parse_model_entry("din") == ("din", ["model.name=din"])
    assert parse_model_entry("suan-L500:data.max_len=500; model.size=size-3") == (
        "suan-L500", ["model.name=suan", "data.max_len=500", "model.size=size-3"])
    label, own = parse_model_entry("ls-distilled:model.name=lightsuan;distill.teacher={name: suan, size: size-3}")
    assert label == "ls-distilled" and own == ["model.name=lightsuan", "distill.teacher={name: suan, size: size-3}"]
    with pytest.raises(ValueError, match="plain name"):
        parse_model_entry("a/b:model.name=din")


TINY_RUN = ["--seeds", "0", "train.epochs=1", "data.max_len=10", "data.batch_size=512"]


def test_compare_gives_both_sizes_and_warns_before_training(tiny, tmp_path, capsys):
    args = ["compare", "--data", "synthetic", "--models", "mlp", "suan", "--out", str(tmp_path),
            f"data.path={tiny.root}", *TINY_RUN]
    assert main(args) == 0
    printed = capsys.readouterr().out
    params = {m: json.loads((tmp_path / f"{m}-s0" / "results.json").read_text())["params"] for m in ("mlp", "suan")}
    md = (tmp_path / "comparison.md").read_text()
    lines = md.splitlines()
    head = next(line for line in lines if line.startswith("| model |")).split(" | ")
    for m in params:  # the first table's row of each model (the per-epoch table comes after)
        row = next(line for line in lines if line.startswith(f"| {m} |")).split(" | ")
        assert row[head.index("dense params")] == f"{params[m]['dense']:,}"
        assert row[head.index("embedding params")] == f"{params[m]['embedding']:,}"
    # SUAN's dense parameters are >2x the MLP's: named before the first run trains, from the meta-device build;
    # its embeddings (embed_dim 8 against 16) are exactly half, within 2x, so not named
    assert params["suan"]["dense"] > 2 * params["mlp"]["dense"]
    assert params["mlp"]["embedding"] == 2 * params["suan"]["embedding"]
    gap = f"dense params {params['suan']['dense']:,} (suan) vs {params['mlp']['dense']:,} (mlp)"
    assert printed.index(f"warning: model sizes differ by more than 2x: {gap}; --embed-dim N") < printed.index("== mlp")
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert gap in report["size_warning"] and "embedding params" not in report["size_warning"]
    assert f"**Warning**: {report['size_warning']}." in md and report["embed_dim"] is None


def test_compare_embed_dim_gives_every_model_one_width(tiny, tmp_path, capsys):
    import yaml

    from ctrscale.accounting import count_params
    from ctrscale.models.registry import build_model
    # registry widths 16, 16 and 32, and din-wide's own 32, which --embed-dim (applied after it) overrides
    labels = ("mlp", "din-wide", "sparsectr")
    args = ["compare", "--data", "synthetic", "--models", "mlp", "din-wide:model.embed_dim=32", "sparsectr",
            "--embed-dim", "4", "--out", str(tmp_path), f"data.path={tiny.root}", *TINY_RUN]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for m in labels:
        assert yaml.safe_load((tmp_path / f"{m}-s0" / "config.yaml").read_text())["model"]["embed_dim"] == 4
    params = {m: json.loads((tmp_path / f"{m}-s0" / "results.json").read_text())["params"] for m in labels}
    # the same tables at one width: equal embedding parameters, a quarter of the MLP's at its default width 16
    default = count_params(build_model(tiny.spec, {"name": "mlp"}))["embedding"]
    assert {p["embedding"] for p in params.values()} == {default * 4 // 16}
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert report["embed_dim"] == 4 and "embed_dim 4 for every model" in report["markdown"]
    assert report["size_warning"] is None and "warning" not in printed.lower()  # dense within 2x too


def test_compare_embed_dim_refuses_a_model_without_one(tiny, tmp_path, capsys):
    args = ["compare", "--data", "synthetic", "--models", "mlp", "ffm", "--embed-dim", "8", "--out", str(tmp_path),
            f"data.path={tiny.root}", *TINY_RUN]
    assert main(args) == 2
    assert "model entry 'ffm' (model ffm) has no embed_dim setting" in capsys.readouterr().err
    assert not list(tmp_path.glob("*-s0"))  # refused before any run trained


def test_compare_size_warning_only_beyond_2x():
    from ctrscale.compare import size_warning
    size = lambda dense, emb: {"dense": dense, "embedding": emb}  # noqa: E731
    assert size_warning({"a": size(100, 50), "b": size(200, 100)}) is None  # exactly 2x
    assert size_warning({"a": size(100, 50), "b": size(201, 100), "c": size(150, 300)}, embed_dim=8) == (
        "model sizes differ by more than 2x: dense params 201 (b) vs 100 (a); embedding params 300 (c) vs 50 (a); "
        "every model is at embed_dim 8; other sizes are set per model entry (LABEL:model.KEY=VALUE)")
