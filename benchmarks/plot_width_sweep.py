"""Width sweep from a `ctrscale compare` folder or a `ctrscale scale` sweep folder (labels = point ids): test
AUC and GAUC gains over a baseline run vs dense parameters, one curve per model family, with the power law
gain = a * N^b fitted (least squares in log-log) to each family's positive gains (the FAT paper's Eq. 12 form).
Writes <out>.png and <out>.md.

    python benchmarks/plot_width_sweep.py runs/scale/fat-width --out runs/scale/fat-width/width_gain \
        --baseline model=hidden-288-144-inputs-fields-name-mlp --baseline-name "MLP [288, 144]" \
        --family "FAT=*name-fat_*" --family "transformer=*name-transformer_*" --family "MLP=*name-mlp"
"""
from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

import numpy as np


def load_runs(folder: Path) -> dict[str, list[dict]]:
    """label -> per-seed {"auc", "gauc", "dense"}: a compare folder's runs, or a scale sweep's points."""
    runs: dict[str, list[dict]] = {}
    if (folder / "results.csv").exists():
        from ctrscale.scaling.sweep import read_results
        for r in read_results(folder / "results.csv"):
            runs.setdefault(r["point"], []).append({"auc": r["auc"], "gauc": r["gauc"], "dense": r["dense_params"]})
        return runs
    for d in folder.iterdir():
        if (d / "results.json").exists():
            res = json.loads((d / "results.json").read_text())
            runs.setdefault(d.name.rsplit("-s", 1)[0], []).append({**res["test"], "dense": res["params"]["dense"]})
    return runs


def seed_mean(runs: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in runs]))


def power_law(params: np.ndarray, gain: np.ndarray) -> tuple[float, float] | None:
    """(a, b) of gain = a * params^b over the points with gain > 0; None with fewer than 3 such points."""
    ok = gain > 0
    if ok.sum() < 3:
        return None
    b, log_a = np.polyfit(np.log(params[ok]), np.log(gain[ok]), 1)
    return float(np.exp(log_a)), float(b)


def family_runs(spec: str, runs: dict[str, list[dict]]) -> tuple[str, list[str]]:
    """NAME=label1,label2,... where a label may be a glob ('*name-fat_*'); labels sorted by dense params."""
    name, patterns = spec.split("=", 1)
    labels = sorted({lab for pat in patterns.split(",") for lab in fnmatch.filter(runs, pat)},
                    key=lambda lab: runs[lab][0]["dense"])
    if not labels:
        raise SystemExit(f"--family {spec}: no run matches (runs: {', '.join(sorted(runs))})")
    return name, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("compare_dir", type=Path)
    ap.add_argument("--baseline", required=True, help="label of the run the gains are measured from")
    ap.add_argument("--baseline-name", help="how the plot names the baseline (default: its label)")
    ap.add_argument("--family", action="append", required=True, help="NAME=label1,label2,... (labels may be globs)")
    ap.add_argument("--metric", action="append", choices=["auc", "gauc"], help="one panel each (default: both)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    metrics = args.metric or ["auc", "gauc"]
    runs = load_runs(args.compare_dir)
    families = [family_runs(spec, runs) for spec in args.family]
    base = {m: seed_mean(runs[args.baseline], m) for m in metrics}
    heads = " | ".join(f"{m.upper()} | {m.upper()} gain" for m in metrics)
    lines = [f"Test gains over `{args.baseline}` ("
             + ", ".join(f"{m.upper()} {base[m]:.4f}" for m in metrics)
             + "), seed means; power law gain = a * N^b fitted to the positive gains.", "",
             f"| family | run | seeds | dense params | {heads} |", "|---|---|---|---|" + "---|---|" * len(metrics)]
    for name, labels in families:
        for lab in labels:
            cells = " | ".join(f"{seed_mean(runs[lab], m):.4f} | {seed_mean(runs[lab], m) - base[m]:+.4f}"
                               for m in metrics)
            lines.append(f"| {name} | {lab} | {len(runs[lab])} | {runs[lab][0]['dense']:,.0f} | {cells} |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
    fits = []
    for ax, metric in zip(axes[0], metrics):
        for name, labels in families:
            params = np.array([runs[lab][0]["dense"] for lab in labels], float)
            gain = np.array([seed_mean(runs[lab], metric) for lab in labels]) - base[metric]
            line, = ax.plot(params, gain, marker="o", label=name)
            fit = power_law(params, gain)
            if fit is not None:
                a, b = fit
                grid = np.geomspace(params.min(), params.max(), 50)
                ax.plot(grid, a * grid ** b, ls="--", color=line.get_color(), alpha=0.6)
                fits.append(f"- {name}, {metric.upper()}: gain = {a:.3g} * N^{b:.3f}")
            else:
                fits.append(f"- {name}, {metric.upper()}: fewer than 3 positive gains, no power law fitted")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("dense parameters")
        ax.set_ylabel(f"test {metric.upper()} gain over {args.baseline_name or args.baseline}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Width sweep")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    text = "\n".join(lines + ["", *fits]) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
