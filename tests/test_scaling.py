"""The scaling toolkit: fits recover known laws, ill-posed fits are refused, sweeps resume, reports embed plots."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from ctrscale.cli import main
from ctrscale.data.loader import Loader, LoaderConfig, subsample_rows
from ctrscale.scaling.laws import FORMS, IllPosed, fit_law, holdout, required_x
from ctrscale.scaling.report import write_report
from ctrscale.scaling.sweep import METRIC_COLUMNS, load_sweep

SWEEPS = Path(__file__).resolve().parents[1] / "src" / "ctrscale" / "configs" / "sweeps"
X = np.repeat([1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6], 3).astype(float)


@pytest.mark.parametrize("form, truth", [("ceiling", [0.80, 0.5, 0.3]), ("ceiling_offset", [0.80, 0.4, 500.0, 0.35]),
                                         ("power", [0.002, 0.2])])
def test_fits_recover_known_parameters_from_noisy_points(form, truth):
    rng = np.random.default_rng(1)
    y = FORMS[form](X, truth)
    y = y * np.exp(rng.normal(0, 0.02, len(X))) if form == "power" else y + rng.normal(0, 3e-4, len(X))
    fit = fit_law(form, X, y, n_boot=200)
    names = FORMS[form].params
    assert fit.r2 > 0.98
    for name, true in zip(names, truth):
        if name == "B":                                  # the offset is weakly identified; its interval is wide
            continue
        lo, hi = fit.interval[name]
        assert abs(fit.params[name] - true) < 4 * fit.stderr[name], (name, true, fit.params[name])
        assert lo <= fit.params[name] <= hi
        assert 0.5 < (hi - lo) / (2 * 1.96 * fit.stderr[name]) < 2    # bootstrap and asymptotic errors agree
    # inversion: the law reaches the target at the predicted x
    target = float(FORMS[form](np.array([2e6]), [fit.params[k] for k in names])[0])
    need = required_x(fit, target)
    assert need["x"] == pytest.approx(2e6, rel=1e-6)
    assert need["interval"][0] <= need["x"] <= need["interval"][1]


def test_one_seed_per_x_gets_a_residual_bootstrap_band_that_covers_the_law():
    """A single seed: a row bootstrap would keep only permutations (a band of zero width); residuals are
    resampled instead. Over noisy replicates the 95% band at the largest x holds the true law most of the time,
    and its width matches the spread of the fitted values across replicates."""
    x = np.array([1e3, 3e3, 1e4, 3e4, 1e5, 3e5])
    truth = [0.80, 0.5, 0.3]
    rng = np.random.default_rng(5)
    top = np.array([x.max()])
    true_top = FORMS["ceiling"](top, truth)[0]
    covered, widths, fitted = 0, [], []
    for _ in range(12):
        fit = fit_law("ceiling", x, FORMS["ceiling"](x, truth) + rng.normal(0, 2e-3, len(x)), n_boot=200)
        assert len(fit.boot) > 150 and len({tuple(np.round(b, 9)) for b in fit.boot}) > 100  # draws differ
        lo, hi = (v[0] for v in fit.band(top))
        covered += lo <= true_top <= hi
        widths.append(hi - lo)
        fitted.append(fit.predict(top)[0])
    assert covered >= 9
    assert 0.4 < np.mean(widths) / (2 * 1.96 * np.std(fitted, ddof=1)) < 3


def test_an_auc_ceiling_is_bounded_by_one_and_a_fit_on_the_bound_says_so():
    y = FORMS["ceiling"](X, [1.3, 0.9, 0.06])           # a law whose ceiling lies above a perfect AUC
    free = fit_law("ceiling", X, y, n_boot=50)
    assert free.params["E"] == pytest.approx(1.3, rel=1e-3) and not free.notes
    bounded = fit_law("ceiling", X, y, n_boot=50, y_max=1.0)
    assert bounded.params["E"] <= 1.0 and all(b[0] <= 1.0 for b in bounded.boot)
    assert bounded.r2 > 0.9 and "bound 1" in bounded.notes[0]
    inside = fit_law("ceiling", X, FORMS["ceiling"](X, [0.8, 0.5, 0.3]), n_boot=20, y_max=1.0)
    assert inside.params["E"] == pytest.approx(0.8, rel=1e-4) and not inside.notes


def test_holdout_predicts_the_largest_point_of_an_exact_law():
    y = FORMS["ceiling"](X, [0.8, 0.5, 0.3])
    out = holdout("ceiling", X, y + np.tile([-1e-5, 0.0, 1e-5], len(X) // 3), n_boot=50)
    assert out["x"] == 1e6 and abs(out["error"]) < 1e-4 and out["inside_interval"]


def test_ill_posed_fits_are_refused_with_a_reason():
    rng = np.random.default_rng(0)
    with pytest.raises(IllPosed, match="too few points"):
        fit_law("ceiling", [1e3, 1e4, 1e3], [0.7, 0.72, 0.71])
    with pytest.raises(IllPosed, match="flat"):
        fit_law("ceiling", X, 0.75 + rng.normal(0, 1e-3, len(X)))
    with pytest.raises(IllPosed, match="positive y"):
        fit_law("power", X, np.linspace(-0.001, 0.003, len(X)))
    spike = np.where(X == 1e4, 0.80, 0.70 + 0.01 * np.log10(X) / 6) + rng.normal(0, 1e-4, len(X))
    with pytest.raises(IllPosed, match="below the best point"):
        fit_law("ceiling", X, spike)


def test_subsampled_training_sets_keep_whole_requests_and_nest(tiny):
    req = tiny.split("train").column("request")
    small, large = subsample_rows(req, 0.2, 0), subsample_rows(req, 0.5, 0)
    assert set(small) <= set(large)
    assert abs(len(large) / len(req) - 0.5) < 0.1
    kept = np.isin(req, req[small])
    assert kept.sum() == len(small)                      # every row of a kept request, no row of another
    for listwise in (False, True):
        loader = Loader(tiny, "train", LoaderConfig(batch_size=64, max_len=5, listwise=listwise, fraction=0.2))
        rows = np.concatenate(loader.plan(0))
        assert sorted(rows) == sorted(small)


def _results_csv(path: Path, law, axis_values, seeds=(0, 1, 2), noise=2e-4):
    """A results.csv as a sweep writes it, from a known law of dense_params."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    (path / "sweep.yaml").write_text("name: made\n")
    with open(path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["point", "seed", "model.dim", *METRIC_COLUMNS])
        w.writeheader()
        for n in axis_values:
            for s in seeds:
                w.writerow({"point": f"dim={int(n)}", "seed": s, "model.dim": n, "auc": law(n) + rng.normal(0, noise),
                            "gauc": law(n) - 0.02, "dense_params": n, "max_len": 50, "train_impressions": 1000,
                            "gflops_per_60": n / 1e6, "wall_seconds": 1.0})


def test_report_embeds_the_plots_and_records_refusals(tmp_path):
    law = lambda n: 0.8 - 0.5 * n ** -0.3  # noqa: E731
    _results_csv(tmp_path, law, [1e3, 1e4, 1e5, 1e6, 1e7])
    requests = [{"name": "auc-vs-params", "x": "dense_params", "form": "ceiling", "holdout": True, "target": 0.795},
                {"name": "gain", "x": "dense_params", "form": "power", "baseline": 0.70},
                {"name": "gain-incl-baseline", "x": "dense_params", "form": "power", "baseline": {"point": "dim=1000"}},
                {"name": "too-few", "x": "dense_params", "form": "ceiling", "where": {"model.dim": 1000}}]
    report = write_report(tmp_path, requests).read_text()
    assert "![auc-vs-params](fits/auc-vs-params.png)" in report and "![gain](fits/gain.png)" in report
    assert (tmp_path / "fits" / "auc-vs-params.png").stat().st_size > 5000
    assert "**Refused**: too few points" in report
    assert "**Refused**: a log-log fit needs positive y" in report      # the baseline's own rows gain ~0
    fitted = json.loads((tmp_path / "fits" / "auc-vs-params.json").read_text())
    assert fitted["fit"]["params"]["E"] == pytest.approx(0.8, abs=2e-3)
    assert fitted["holdout"]["inside_interval"] and "Holdout" in report
    gain = json.loads((tmp_path / "fits" / "gain.json").read_text())
    assert gain["baseline_value"] == 0.70 and gain["fit"]["params"]["b"] > 0
    ref = json.loads((tmp_path / "fits" / "gain-incl-baseline.json").read_text())
    assert ref["baseline_value"] == pytest.approx(law(1e3), abs=5e-4)
    # the CLI predicts from a saved fit
    assert main(["scale", "predict", str(tmp_path), "--fit", "auc-vs-params", "--target", "0.79"]) == 0


def test_sweep_runs_in_parallel_writes_each_point_and_resumes_only_the_missing(tmp_path, capsys):
    sweep = SWEEPS / "tiny.yaml"
    spec = load_sweep(sweep)
    out = tmp_path / "tiny"
    assert main(["scale", "run", str(sweep), "--out", str(out), "--parallel", "2", "--quiet"]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["point"] for r in rows} == {"hidden=16_max_len=5", "hidden=16_max_len=20",
                                                            "hidden=64_max_len=5", "hidden=64_max_len=20"}
    assert all(float(r["wall_seconds"]) > 0 and float(r["train_impressions"]) > 0 for r in rows)
    assert {int(float(r["max_len"])) for r in rows} == {5, 20} and spec.axes["data.max_len"] == [5, 20]
    wide = [r for r in rows if r["point"].startswith("hidden=64")][0]
    narrow = [r for r in rows if r["point"].startswith("hidden=16")][0]
    assert float(wide["dense_params"]) > float(narrow["dense_params"])
    # remove one point: a second run trains it alone and leaves the others untouched
    gone = out / "points" / "hidden=64_max_len=20-s0"
    kept = out / "points" / "hidden=16_max_len=5-s0" / "results.json"
    before = kept.stat().st_mtime_ns
    for f in sorted(gone.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    gone.rmdir()
    assert main(["scale", "run", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert kept.stat().st_mtime_ns == before
    assert (gone / "point.json").exists()
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    # an edited base would mix experiments: the sweep refuses, naming a point and the setting that changed
    edited = tmp_path / "edited.yaml"
    edited.write_text(sweep.read_text().replace("epochs: 1,", "epochs: 2,"))
    assert main(["scale", "run", str(edited), "--out", str(out), "--quiet"]) == 2
    assert re.search(r"4 point\(s\).*ran under another config.*train.epochs: 1 -> 2", capsys.readouterr().err)


def test_every_shipped_sweep_expands_to_valid_configs():
    from ctrscale.scaling.sweep import expand, run_config
    for path in SWEEPS.glob("*.yaml"):
        spec = load_sweep(path)
        points = expand(spec)
        assert len(points) == len({p.folder for p in points}) > 0, path.name
        for p in points:
            run_config(spec, p, Path("/tmp/unused"))       # typed and validated: a typo fails here
        for req in spec.fits:
            assert req["form"] in FORMS and {"name", "x"} <= set(req), (path.name, req)
