"""Width sweep from a `ctrscale compare` folder or a `ctrscale scale` sweep folder (labels = point ids): test
AUC gain over a baseline run vs dense parameters, one curve per model family, with the power law gain = a * N^b
fitted (least squares in log-log) to each family's positive gains (the FAT paper's Eq. 12 form).
Writes <out>.png and <out>.md.

    python benchmarks/plot_width_sweep.py /tmp/exp/fat/ml1m --baseline mlp-f \
        --family FAT=fat-w16,fat-w32,fat-s,fat-w64,fat-l,fat-w256 \
        --family transformer=transformer-w32,transformer-w64,transformer-s,transformer-w256,transformer-l \
        --family MLP=mlp-w64,mlp-w128,mlp-f,mlp-w512,mlp-l --out benchmarks/results/fat_width_ml1m
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("compare_dir", type=Path)
    ap.add_argument("--baseline", required=True, help="label of the run the gains are measured from")
    ap.add_argument("--family", action="append", required=True, help="NAME=label1,label2,...")
    ap.add_argument("--metric", default="auc", choices=["auc", "gauc"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs = load_runs(args.compare_dir)
    base = seed_mean(runs[args.baseline], args.metric)
    lines = [f"Test {args.metric.upper()} gain over `{args.baseline}` ({base:.4f}), seed means; "
             f"power law gain = a * N^b fitted to the positive gains.", "",
             "| family | run | seeds | dense params | AUC | gain |", "|---|---|---|---|---|---|"]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    fits = []
    for spec in args.family:
        name, labels = spec.split("=", 1)
        have = [lab for lab in labels.split(",") if lab in runs]
        params = np.array([runs[lab][0]["dense"] for lab in have], float)
        value = np.array([seed_mean(runs[lab], args.metric) for lab in have])
        order = np.argsort(params)
        params, value, have = params[order], value[order], [have[i] for i in order]
        gain = value - base
        for lab, p, v, g in zip(have, params, value, gain):
            lines.append(f"| {name} | {lab} | {len(runs[lab])} | {p:,.0f} | {v:.4f} | {g:+.4f} |")
        line, = ax.plot(params, gain, marker="o", label=name)
        fit = power_law(params, gain)
        if fit is not None:
            a, b = fit
            grid = np.geomspace(params.min(), params.max(), 50)
            ax.plot(grid, a * grid ** b, ls="--", color=line.get_color(), alpha=0.6)
            fits.append(f"- {name}: gain = {a:.3g} * N^{b:.3f}")
        else:
            fits.append(f"- {name}: fewer than 3 positive gains, no power law fitted")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("dense parameters")
    ax.set_ylabel(f"test {args.metric.upper()} gain over {args.baseline}")
    ax.set_title("Width sweep")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    text = "\n".join(lines + ["", *fits]) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
