"""The main job (`ctrscale demo`): ctrscale's story on the embedded synthetic data, in minutes.

1. A curated comparison (configs/demo.yaml: MLP, DIN, SUAN, LightSUAN distilled from a SUAN teacher, SparseCTR,
   EST, FAT; each small, seed fixed): test AUC / GAUC beside dense and embedding parameters, counted FLOPs per
   impression and training throughput, and AUC against FLOPs (auc_vs_cost.png), the trade-off a user chooses on.
2. A scaling law: one model trained on fractions of the training data, AUC = E - A D^-alpha fitted over the
   fractions and the full run, with its bootstrap band and the prediction for twice the data (scaling/).
3. Serving: the best model exported as a bundle and one test request of raw values scored through the Scorer.
4. summary.md (what ran, the table, what it shows, the plots) and report.html (the same, plots embedded: one file
   to open in a browser); results.json and demo.json hold the numbers.

`--full` trains every registered model at its registry defaults instead; `--models` picks labels of the curated
set or registered names; `key=value` overrides apply to every run after its own settings, as in `train`. Runs
live under <out>/runs/<label> and are reused when their config is unchanged (refused when it differs, unless
--overwrite)."""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import catalog
from .errors import ConfigError
from .models.index import MODELS
from .reports import markdown_table, plot_tradeoff, write_html
from .train.config import RunConfig, load_config
from .train.result import RunResult, StoppedRun
from .typed import checked, from_dict, load_yaml

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
POOR_FIT_R2 = 0.8  # below it the law's prediction is reported as untrustworthy
COLUMNS = ["model", "test AUC", "test GAUC", "test logloss", "dense params", "embedding params", "MFLOPs / impr.",
           "train impr./s", "train s"]


@dataclass
class ScalingPlan:
    model: str = "suan"                      # a label of the demo's models: its run is the full-size point
    fractions: list[float] = checked(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5], gt=0, lt=1)
    n_boot: int = checked(400, ge=50)        # bootstrap refits for the band (each a least-squares fit: ~5 s)


@dataclass
class DemoSpec:
    base: dict = field(default_factory=dict)                 # run config shared by every run
    models: dict[str, dict] = field(default_factory=dict)    # label -> that run's own settings (model, distill, ...)
    scaling: ScalingPlan = field(default_factory=ScalingPlan)


def load_spec(path: Path = DEMO_CONFIG) -> DemoSpec:
    return from_dict(DemoSpec, load_yaml(Path(path).read_text(), str(path)) or {}, "")


def pick_models(spec: DemoSpec, models: list[str] | None, full: bool) -> dict[str, dict]:
    """The runs to compare: the curated set, every registered model at its defaults (`full`), or the named ones
    (a curated label, else a registered model at its defaults)."""
    if full and models:
        raise ConfigError("demo: give --full (every registered model) or --models, not both")
    if full:
        return {name: {"model": {"name": name}} for name in sorted(MODELS)}
    chosen = {}
    for name in models or list(spec.models):
        if name in spec.models:
            chosen[name] = spec.models[name]
        elif name in MODELS:
            chosen[name] = {"model": {"name": name}}
        else:
            raise ConfigError(f"demo --models: unknown {name!r}; the demo's models are {list(spec.models)}, the "
                              f"registry's {sorted(MODELS)}")
    return chosen


def merged(base: dict, own: dict) -> dict:
    """`own` over `base`, section by section (a model's settings add to the shared data/train sections)."""
    out = copy.deepcopy(base)
    for k, v in own.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model" else \
            copy.deepcopy(v)
    return out


def run_demo(out: Path, models: list[str] | None = None, full: bool = False, overrides: list[str] = (),
             data_options: dict | None = None, progress: bool = True, overwrite: bool = False,
             spec: DemoSpec | None = None) -> dict:
    """Run the demo into `out`; returns what demo.json holds."""
    from .train.loop import reuse_or_fit
    t0 = time.perf_counter()
    spec = spec or load_spec()
    chosen = pick_models(spec, models, full)
    data = spec.base.get("data", {})
    path, report = catalog.prepare(data.get("name", "synthetic"), **{**data.get("options", {}), **(data_options or {})})
    if report is not None and progress:
        print((path / "report.md").read_text())

    def config(label: str, own: dict, extra: list[str] = ()) -> RunConfig:
        return load_config(None, [f"name={label}", f"out_dir={out / 'runs'}", f"data.path={path}",
                                  f"train.progress={str(progress).lower()}", *extra, *overrides],
                           base=merged(spec.base, own))

    plans = {label: config(label, own) for label, own in chosen.items()}  # every config checked before training
    sweep = scaling_configs(spec, chosen, plans, config)
    out.mkdir(parents=True, exist_ok=True)  # after every check: a refused call leaves no folder behind
    results: dict[str, RunResult] = {}
    reused = 0
    for i, (label, cfg) in enumerate([*plans.items(), *sweep.items()], 1):
        reused += (cfg.run_dir / "results.json").exists()  # finished before: reused when its config is unchanged
        if progress:
            print(f"== [{i}/{len(plans) + len(sweep)}] {label} ({cfg.run_dir})", flush=True)
        t = time.perf_counter()
        results[label] = reuse_or_fit(cfg, overwrite)
        if isinstance(results[label], StoppedRun):
            raise ConfigError(f"demo: {label} stopped at step {results[label].step} (train.max_steps); the demo "
                              f"compares finished runs: drop train.max_steps")
        if progress:
            print(f"   {label}: test AUC {results[label].test['auc']:.4f} ({time.perf_counter() - t:.0f} s)",
                  flush=True)
    compared = [results[label] for label in plans]
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in compared], indent=1))
    plot_tradeoff({r.name: (mflops(r), r.test["auc"], r.params["dense"]) for r in compared}, out / "auc_vs_cost.png")
    law = fit_scaling(spec.scaling, results, sweep, out / "scaling") if sweep else {
        "skipped": f"{spec.scaling.model} is not among the models run"}
    served = serve_best(out, compared, path, overwrite, progress)
    summary = {"data": str(path), "models": list(plans), "scaling": law, "serving": served,
               "wall_seconds": round(time.perf_counter() - t0, 1), "runs": len(results), "runs_reused": reused}
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    text = summary_markdown(compared, plans[next(iter(plans))], summary)
    (out / "summary.md").write_text(text)
    write_html(text, out, out / "report.html", "ctrscale demo")
    if progress:
        print("\n" + text.split("## Plots")[0].rstrip())
        print(f"\nreport: {out / 'summary.md'} and {out / 'report.html'} (open in a browser); "
              f"{summary['wall_seconds']:.0f} s in all")
    return summary


def scaling_configs(spec: DemoSpec, chosen: dict, plans: dict, config) -> dict[str, RunConfig]:
    """The sweep's runs: the scaling model on each fraction of the training data, trained for the same number of
    steps as the full run (epochs / fraction, early-stopped on validation)."""
    label = spec.scaling.model
    if label not in plans:
        return {}
    epochs = plans[label].train.epochs
    return {f"{label}-data{f:g}": config(f"{label}-data{f:g}", chosen[label],
                                         [f"data.train_fraction={f}", f"train.epochs={math.ceil(epochs / f)}"])
            for f in spec.scaling.fractions}


def mflops(r: RunResult) -> float:
    """Counted inference FLOPs per impression, in millions (the runs count them on one batch of 60)."""
    return r.inference_gflops_per_60 / 60 * 1e3


def fit_scaling(plan: ScalingPlan, results: dict[str, RunResult], sweep: dict, out: Path) -> dict:
    """AUC = E - A D^-alpha over the fractions and the full run; the prediction (with its 95% bootstrap interval)
    at twice the full data. A fit the points do not support is refused, with the reason, not drawn."""
    from .scaling.laws import IllPosed, fit_law
    from .scaling.report import plot_fit
    out.mkdir(exist_ok=True)
    runs = [results[label] for label in [*sweep, plan.model]]
    x = np.array([r.train_impressions for r in runs], float)
    y = np.array([r.test["auc"] for r in runs])
    points = [{"run": r.name, "train_impressions": int(xi), "auc": float(yi)} for r, xi, yi in zip(runs, x, y)]
    try:
        fit = fit_law("ceiling", x, y, n_boot=plan.n_boot, y_max=1.0)
    except IllPosed as e:
        return {"model": plan.model, "points": points, "refused": str(e)}
    nxt = 2 * x.max()
    lo, hi = (float(v[0]) for v in fit.band(np.array([nxt])))
    forecast = {"x": nxt, "predicted": float(fit.predict(np.array([nxt]))[0]), "interval": [lo, hi]}
    request = {"name": f"{plan.model}: AUC against training data", "x": "train impressions", "metric": "auc"}
    plot_fit(fit, x, y, request, None, out / "auc_vs_data.png", forecast=forecast)
    return {"model": plan.model, "points": points, "law": fit.law.formula, "params": fit.params, "r2": fit.r2,
            "interval": fit.interval, "bootstrap_draws": len(fit.boot), "notes": fit.notes, "next": forecast,
            "plot": "scaling/auc_vs_data.png"}


def summary_markdown(results: list[RunResult], first: RunConfig, summary: dict) -> str:
    r0, law = results[0], summary["scaling"]
    wall = f"{summary['wall_seconds']:.0f} s on this machine for {summary['runs']} runs" + (
        f" ({summary['runs_reused']} of them reused from an earlier call)" if summary["runs_reused"] else "")
    epochs = f"{first.train.epochs} epoch{'s' * (first.train.epochs > 1)}"
    lines = [f"# ctrscale demo: {len(results)} models on synthetic data", "",
             f"Data: `{r0.dataset}` ({r0.train_impressions:,} training impressions, histories cut to the last "
             f"{r0.max_len} behaviors); {epochs}, seed {first.train.seed}; {wall}. Test "
             f"metrics use the weights of the best validation epoch; MFLOPs are counted by torch's FLOP counter "
             f"per impression at inference; impressions/s is training throughput here.", "",
             markdown_table([table_row(r) for r in results], COLUMNS), ""]
    for r in results:
        if r.teacher_test:
            lines += [f"{r.name} was distilled online from a {r.distilled_from.get('name')} teacher "
                      f"({r.distilled_from.get('layers')} layers; its test AUC {r.teacher_test['auc']:.4f}); only the "
                      f"student is kept and served (its FLOPs are the student's; its training throughput includes "
                      f"the teacher's).", ""]
    lines += ["## What it shows", "", *findings(results, law, summary["serving"]), "", "## Plots", "",
              "![test AUC against inference FLOPs](auc_vs_cost.png)", ""]
    if "plot" in law:
        lines += [f"![{law['model']}: AUC against training data]({law['plot']})", ""]
    return "\n".join(lines)


def findings(results: list[RunResult], law: dict, served: dict) -> list[str]:
    """The three sentences (and the serving line), written from the numbers."""
    base = results[0]
    best = max(results, key=lambda r: r.test["auc"])
    frontier = pareto(results)
    gain = best.test["auc"] - base.test["auc"]
    out = [f"- **{best.name}** has the best test AUC, {best.test['auc']:.4f}, {gain:+.4f} "
           f"over {base.name} ({base.test['auc']:.4f}), at {mflops(best):.2f} MFLOPs per impression "
           f"({mflops(best) / mflops(base):.0f}x {base.name}'s)." if best is not base else
           f"- **{base.name}**, the baseline, has the best test AUC ({base.test['auc']:.4f}).",
           "- On the accuracy/cost frontier (no other model is more accurate for less): " +
           ", ".join(f"{r.name} ({mflops(r):.2f} MFLOPs, AUC {r.test['auc']:.4f})" for r in frontier) +
           "; each other model is beaten by one of these at no more cost."]
    if "next" in law:
        p, nxt = law["params"], law["next"]
        poor = law["r2"] < POOR_FIT_R2
        out.append(f"- {law['model']}'s test AUC {'is fitted poorly by' if poor else 'follows'} {law['law']} with "
                   f"x = training impressions (E = {p['E']:.4f}, alpha = {p['alpha']:.3g}, R² = {law['r2']:.3f} over "
                   f"{len(law['points'])} sizes); with twice the data ({nxt['x']:,.0f} impressions) it predicts AUC "
                   f"{nxt['predicted']:.4f}, 95% interval [{nxt['interval'][0]:.4f}, {nxt['interval'][1]:.4f}]" +
                   (" (the points are mostly noise: do not plan on this)." if poor else "."))
    else:
        out.append(f"- Scaling: no law fitted ({law.get('refused') or law.get('skipped')}).")
    if served:
        out.append(f"- Serving: {served['model']} was exported to `{served['bundle']}`; one test request of "
                   f"{served['candidates']} candidates with {served['history']} behaviors scored in "
                   f"{served['latency_ms']:.1f} ms through the Scorer (`ctrscale serve {served['bundle']}`).")
    return out


def pareto(results: list[RunResult]) -> list[RunResult]:
    """The runs no other run beats on both test AUC and FLOPs, cheapest first."""
    front = []
    for r in sorted(results, key=lambda r: (mflops(r), -r.test["auc"])):
        if not front or r.test["auc"] > front[-1].test["auc"]:
            front.append(r)
    return front


def table_row(r: RunResult) -> list[str]:
    t = r.test
    speed = f"{r.train_impressions_per_s:,.0f}" if r.train_impressions_per_s else "-"
    return [r.name, f"{t['auc']:.4f}", f"{t.get('gauc', float('nan')):.4f}", f"{t['logloss']:.4f}",
            f"{r.params['dense']:,}", f"{r.params['embedding']:,}", f"{mflops(r):.3f}", speed,
            f"{r.train_seconds:.0f}"]


def serve_best(out: Path, results: list[RunResult], data_path: Path, overwrite: bool, progress: bool) -> dict:
    """Export the best run and score one test request through the Scorer, as a deployment would."""
    from .data.dataset import PreparedDataset
    from .serving import Scorer, export_bundle
    from .serving.bundle import is_bundle
    from .serving.replay import RawDecoder
    best = max(results, key=lambda r: r.test["auc"])
    run = out / "runs" / best.name
    bundle = out / "bundle"
    same_run = is_bundle(bundle) and json.loads((bundle / "manifest.json").read_text()).get("run_path") == \
        str(run.resolve())
    export_bundle(run, bundle, overwrite=overwrite or same_run)  # re-exporting the same run replaces its bundle
    scorer = Scorer(bundle)
    data = PreparedDataset(data_path)
    request, _ = max(RawDecoder(data).requests("test", np.arange(min(2000, len(data.split("test"))))),
                     key=lambda r: len(r[0]["candidates"][next(iter(r[0]["candidates"]))]))
    scorer.score(request)  # the first call pays for allocations
    t = time.perf_counter()
    res = scorer.score(request, use_cache=False)
    ms = (time.perf_counter() - t) * 1e3
    summary = {"model": best.name, "bundle": str(bundle), "candidates": len(res.scores),
               "history": len(request.get("history", {}).get("time", [])), "latency_ms": round(ms, 2),
               "timing_ms": res.timing_ms, "scores": [round(float(x), 4) for x in res.scores[:5]]}
    (out / "serving.json").write_text(json.dumps(summary, indent=1))
    if progress:
        print(f"best model {best.name} exported to {bundle}; one request ({summary['candidates']} candidates, "
              f"{summary['history']} behaviors) scored in {ms:.1f} ms through the Scorer")
    return summary
