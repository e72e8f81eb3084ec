"""Fits over a sweep's results.csv, one PNG per fit, and the Markdown report that embeds them.

A fit request (from the sweep file's `fits:` or `ctrscale scale fit`):
    {name: auc-vs-length, x: max_len, form: ceiling, metric: auc, where: {model.size: size-2},
     baseline: {model.name: mlp} | 0.7872 (y becomes the gain over it), holdout: true, target: 0.80}
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..reports import markdown_table, pyplot, save_figure
from .laws import Fit, IllPosed, fit_law, holdout, required_x
from .sweep import read_results


def _matches(row: dict, where: dict) -> bool:
    return all(str(row.get(k)) == str(v) or row.get(k) == v for k, v in (where or {}).items())


BOUNDED_BY_ONE = {"auc", "gauc", "uauc", "valid_auc", "valid_gauc"}


def select(rows: list[dict], request: dict) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(x, y) of the rows a request names; y minus the baseline's mean when it has one."""
    metric = request.get("metric", "auc")
    chosen = [r for r in rows if _matches(r, request.get("where"))]
    if request.get("x") not in (chosen[0] if chosen else {}):
        raise IllPosed(f"no rows with column {request.get('x')!r} (where {request.get('where')})")
    x = np.array([r[request["x"]] for r in chosen], float)
    y = np.array([r[metric] for r in chosen], float)
    base = request.get("baseline")
    if isinstance(base, dict):
        ref = [r[metric] for r in rows if _matches(r, base)]
        if not ref:
            raise IllPosed(f"no baseline rows match {base}")
        base = float(np.mean(ref))
    return x, (y - base if base is not None else y), base


def run_fit(rows: list[dict], request: dict, out: Path) -> dict:
    """Fit one request; writes <name>.json and <name>.png into `out`; a refused fit is recorded with its reason."""
    name = request["name"]
    entry = {"request": request}
    try:
        x, y, base = select(rows, request)
        entry["baseline_value"] = base
        # AUC-like metrics cannot exceed 1; a gain over a baseline can only reach 1 - baseline
        y_max = (1.0 - (base or 0.0)) if request.get("metric", "auc") in BOUNDED_BY_ONE else None
        fit = fit_law(request["form"], x, y, request.get("n_boot", 500), y_max=y_max)
        entry["fit"] = fit.to_dict()
        if request.get("holdout"):
            try:
                entry["holdout"] = holdout(request["form"], x, y, request.get("n_boot", 500), y_max=y_max)
            except IllPosed as e:
                entry["holdout"] = {"refused": str(e)}
        if request.get("target") is not None:
            target = float(request["target"]) - (base or 0.0)
            entry["predict"] = required_x(fit, target)
        plot_fit(fit, x, y, request, entry.get("holdout"), out / f"{name}.png")
        entry["plot"] = f"{name}.png"
    except IllPosed as e:
        entry["refused"] = str(e)
    (out / f"{name}.json").write_text(json.dumps({k: v for k, v in entry.items() if k != "fit"} |
                                                 {"fit": _without_draws(entry.get("fit"))}, indent=1))
    (out / f"{name}.draws.json").write_text(json.dumps(entry.get("fit")))
    return entry


def _without_draws(fit: dict | None) -> dict | None:
    return None if fit is None else {k: v for k, v in fit.items() if k != "boot"}


def plot_fit(fit: Fit, x, y, request: dict, held: dict | None, path: Path, extrapolate: float = 4.0,
             forecast: dict | None = None) -> None:
    """The measured points, the law and its band out to `extrapolate` times the largest x; `held` (a holdout's
    prediction, then measured) and `forecast` ({x, predicted, interval}: a point not measured) are marked."""
    xs = np.unique(x)
    means = np.array([y[x == v].mean() for v in xs])
    stds = np.array([y[x == v].std(ddof=1) if (x == v).sum() > 1 else 0.0 for v in xs])
    grid = np.geomspace(xs.min(), xs.max() * extrapolate, 200)
    lo, hi = fit.band(grid)
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    ax.fill_between(grid, lo, hi, alpha=0.2, label="95% bootstrap band")
    ax.plot(grid, fit.predict(grid), label=_label(fit))
    ax.errorbar(xs, means, yerr=stds, fmt="o", color="k", capsize=3, label="measured (mean ± std over seeds)")
    if held and "predicted" in held:
        ax.errorbar([held["x"]], [held["predicted"]], yerr=[[held["predicted"] - held["interval"][0]],
                                                            [held["interval"][1] - held["predicted"]]],
                    fmt="s", color="tab:red", capsize=3, label=f"holdout prediction (error {held['error']:+.4f})")
    if forecast:
        p, (lo, hi) = forecast["predicted"], forecast["interval"]
        ax.errorbar([forecast["x"]], [p], yerr=[[p - lo], [hi - p]], fmt="D", color="tab:red", capsize=3,
                    label=f"prediction at x = {forecast['x']:,.0f}: {p:.4f} [{lo:.4f}, {hi:.4f}]")
    ax.set_xscale("log")
    if fit.form == "power":
        ax.set_yscale("log")
    metric = request.get("metric", "auc").upper()
    ax.set_xlabel(request["x"])
    ax.set_ylabel(f"{metric} gain over baseline" if request.get("baseline") is not None else metric)
    ax.set_title(request["name"])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _label(fit: Fit) -> str:
    vals = ", ".join(f"{k}={v:.4g}" for k, v in fit.params.items())
    return f"{fit.law.formula}: {vals} (R²={fit.r2:.3f})"


def write_report(sweep_dir: Path, requests: list[dict], title: str = "") -> Path:
    """Fit every request over <sweep_dir>/results.csv; writes fits/ and report.md."""
    sweep_dir = Path(sweep_dir)
    rows = read_results(sweep_dir / "results.csv")
    fits_dir = sweep_dir / "fits"
    fits_dir.mkdir(exist_ok=True)
    lines = [f"# Scaling report: {title or sweep_dir.name}", "",
             f"{len(rows)} finished runs ({len({r['point'] for r in rows})} points); "
             f"wall time {sum(r['wall_seconds'] for r in rows) / 3600:.2f} h summed over runs.", ""]
    lines.append(_points_table(rows))
    for req in requests:
        entry = run_fit(rows, req, fits_dir)
        lines += ["", f"## {req['name']}", "", f"x = `{req['x']}`, y = `{req.get('metric', 'auc')}`"
                  + (f" minus the baseline {entry.get('baseline_value'):.4f}" if entry.get("baseline_value")
                     is not None else "") + (f", rows where {req['where']}" if req.get("where") else ""), ""]
        if "refused" in entry:
            lines.append(f"**Refused**: {entry['refused']}")
            continue
        fit = entry["fit"]
        lines += [f"`{fit['formula']}`, R² = {fit['r2']:.4f}, {fit['n_points']} runs at {fit['n_x']} x values", "",
                  markdown_table([[k, f"{v:.6g}", f"{fit['stderr'][k]:.3g}",
                                   f"[{fit['interval'][k][0]:.6g}, {fit['interval'][k][1]:.6g}]"]
                                  for k, v in fit["params"].items()],
                                 ["parameter", "value", "std. error", "95% bootstrap interval"])]
        lines += [f"\nNote: {note}" for note in fit.get("notes", [])]
        held = entry.get("holdout")
        if held and "predicted" in held:
            lines += ["", f"Holdout: fitted without x = {held['x']:.6g}, predicted {held['predicted']:.4f} "
                          f"[{held['interval'][0]:.4f}, {held['interval'][1]:.4f}], measured {held['observed']:.4f}: "
                          f"error {held['error']:+.4f} ({'inside' if held['inside_interval'] else 'outside'} the "
                          f"interval)."]
        elif held:
            lines += ["", f"Holdout refused: {held['refused']}"]
        if "predict" in entry:
            p = entry["predict"]
            ci = f" [{p['interval'][0]:.4g}, {p['interval'][1]:.4g}]" if p["interval"] else ""
            lines += ["", f"To reach {req['target']}: {req['x']} = {p['x']:.4g}{ci}; "
                          f"{100 * p['unreachable_share']:.0f}% of bootstrap laws never reach it."]
        lines += ["", f"![{req['name']}](fits/{entry['plot']})"]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _points_table(rows: list[dict]) -> str:
    by_point: dict[str, list[dict]] = {}
    for r in rows:
        by_point.setdefault(r["point"], []).append(r)
    table = []
    for pid, rs in by_point.items():
        auc, gauc = np.array([r["auc"] for r in rs]), np.array([r["gauc"] for r in rs], float)
        sd = lambda a: f" ± {a.std(ddof=1):.4f}" if len(a) > 1 else ""  # noqa: E731
        table.append([pid, str(len(rs)), f"{auc.mean():.4f}{sd(auc)}", f"{gauc.mean():.4f}{sd(gauc)}",
                      f"{rs[0]['dense_params']:,.0f}", f"{rs[0]['max_len']:.0f}", f"{rs[0]['train_impressions']:,.0f}",
                      f"{rs[0]['gflops_per_60']:.4g}"])
    return markdown_table(table, ["point", "seeds", "AUC", "GAUC", "dense params", "max_len", "train impressions",
                                  "GFLOPs/60"])
