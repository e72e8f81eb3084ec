"""The main job on a small synthetic set: the table equals the runs' own results, the scaling law is refitted
independently, the report embeds its plots, the best model is served, and a second call reuses every run."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from ctrscale.cli import main as cli
from ctrscale.cli import overrides_last
from ctrscale.demo import load_spec, merged, pick_models, run_demo
from ctrscale.errors import ConfigError, RunError
from ctrscale.models.index import MODELS
from ctrscale.scaling.laws import fit_law
from ctrscale.serving import load_bundle
from ctrscale.train.result import RunResult

SMALL = {"impressions": 6000, "n_users": 600}
FAST = ["data.max_len=20", "data.batch_size=256"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """mlp and din (the curated settings) and a four-size data sweep of din, on a small synthetic set."""
    spec = load_spec()
    spec.scaling.model = "din"
    spec.scaling.fractions = [0.125, 0.25, 0.5]
    spec.scaling.n_boot = 50
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:  # the module's own home: not the user's cache, kept for the reuse test
        mp.setenv("CTRSCALE_HOME", str(out / "home"))
        summary = run_demo(out, models=["mlp", "din"], overrides=FAST, data_options=SMALL, progress=False,
                           spec=spec)
    return out, spec, summary


def test_the_table_is_the_runs_own_results(demo):
    out, _, summary = demo
    rows = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rows] == ["mlp", "din"] == summary["models"]
    text = (out / "summary.md").read_text()
    for r in rows:
        own = RunResult.read(out / "runs" / r["name"] / "results.json")
        line = next(line for line in text.splitlines() if line.startswith(f"| {r['name']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == f"{own.test['auc']:.4f}" and cells[2] == f"{own.test['gauc']:.4f}"
        assert cells[4] == f"{own.params['dense']:,}" and cells[5] == f"{own.params['embedding']:,}"
        assert float(cells[6]) == pytest.approx(own.inference_gflops_per_60 / 60 * 1e3, abs=1e-3)
        assert own.config["data"]["max_len"] == 20  # the overrides reached every run
    best = max(rows, key=lambda r: r["test"]["auc"])["name"]
    assert f"**{best}** has the best test AUC" in text or best == "mlp"


def test_the_scaling_law_is_refitted_independently(demo):
    out, spec, summary = demo
    law = summary["scaling"]
    runs = [RunResult.read(out / "runs" / f"din-data{f:g}" / "results.json") for f in spec.scaling.fractions]
    runs.append(RunResult.read(out / "runs" / "din" / "results.json"))
    x = np.array([r.train_impressions for r in runs], float)
    assert [p["train_impressions"] for p in law["points"]] == x.tolist()
    assert len(set(x)) == 4 and np.all(np.diff(x) > 0)  # nested subsets, growing
    # each fraction trains as many steps as the full run: epochs = 1 / fraction
    assert [r.config["train"]["epochs"] for r in runs] == [8, 4, 2, 1]
    y = np.array([r.test["auc"] for r in runs])
    text = (out / "summary.md").read_text()
    if "refused" in law:  # four noisy points may not support a ceiling: then the reason is reported, no plot
        assert f"no law fitted ({law['refused']})" in text and not (out / "scaling" / "auc_vs_data.png").exists()
        return
    fit = fit_law("ceiling", x, y, n_boot=50, y_max=1.0)
    assert law["params"] == pytest.approx(fit.params, rel=1e-6) and law["r2"] == pytest.approx(fit.r2)
    assert ("do not plan on this" in text) == (fit.r2 < 0.8)
    e, a, alpha = (law["params"][k] for k in ("E", "A", "alpha"))
    nxt = law["next"]
    assert nxt["x"] == 2 * x.max() and nxt["predicted"] == pytest.approx(e - a * nxt["x"] ** -alpha)
    assert nxt["interval"][0] <= nxt["predicted"] <= nxt["interval"][1]
    assert (out / law["plot"]).exists() and f"predicts AUC {nxt['predicted']:.4f}" in text


def test_report_html_embeds_every_plot_and_the_best_model_is_served(demo):
    out, _, summary = demo
    text = (out / "summary.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert "auc_vs_cost.png" in images and all((out / i).exists() for i in images)
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(images) and ".png\"" not in html
    assert "<table>" in html and "What it shows" in html
    served = json.loads((out / "serving.json").read_text())
    rows = json.loads((out / "results.json").read_text())
    assert served["model"] == max(rows, key=lambda r: r["test"]["auc"])["name"]
    assert served["candidates"] >= 1 and all(0 < s < 1 for s in served["scores"])
    assert load_bundle(out / "bundle").manifest["run_path"] == str((out / "runs" / served["model"]).resolve())


def test_a_second_call_reuses_every_run_and_a_changed_setting_is_refused(demo, monkeypatch):
    out, spec, first = demo
    monkeypatch.setenv("CTRSCALE_HOME", str(out / "home"))
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")}
    again = run_demo(out, models=["mlp", "din"], overrides=FAST, data_options=SMALL, progress=False, spec=spec)
    assert again["runs_reused"] == again["runs"] == 5
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")} == stamps
    assert again["scaling"].get("params") == first["scaling"].get("params")
    with pytest.raises(RunError, match="train.epochs"):
        run_demo(out, models=["mlp"], overrides=[*FAST, "train.epochs=2"], data_options=SMALL, progress=False,
                 spec=spec)


def test_models_are_picked_from_the_curated_set_or_the_registry():
    spec = load_spec()
    assert list(pick_models(spec, None, False)) == ["mlp", "din", "suan", "lightsuan-distilled", "sparsectr", "est",
                                                    "fat"]
    assert pick_models(spec, None, True) == {n: {"model": {"name": n}} for n in sorted(MODELS)}
    picked = pick_models(spec, ["suan", "hstu"], False)
    assert picked["suan"] == spec.models["suan"] and picked["hstu"] == {"model": {"name": "hstu"}}
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        pick_models(spec, ["nope"], False)
    with pytest.raises(ConfigError, match="--full .* or --models, not both"):
        pick_models(spec, ["din"], True)
    # a model's settings add to the shared sections; its model section replaces, never mixes two models
    base = {"data": {"max_len": 50, "batch_size": 512}, "model": {"name": "din", "hidden": [8]}}
    own = {"data": {"max_len": 10}, "model": {"name": "mlp"}}
    assert merged(base, own) == {"data": {"max_len": 10, "batch_size": 512}, "model": {"name": "mlp"}}
    assert base["data"]["max_len"] == 50  # not modified in place
    assert copy.deepcopy(spec.models) == load_spec().models


def test_demo_overrides_stand_anywhere_and_bad_picks_are_one_line(capsys):
    assert overrides_last(["demo", "--models", "mlp", "din", "train.epochs=2", "--out", "x"]) == \
        ["demo", "--models", "mlp", "din", "--out", "x", "--", "train.epochs=2"]
    assert cli(["demo", "--models", "nope", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ctrscale demo: error: demo --models: unknown 'nope'")
