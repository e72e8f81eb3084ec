"""What each feature group is worth, one seed (issue 29): for each model, test AUC and GAUC on the full feature set
against the same model with one group dropped, with a paired bootstrap over users (1000 replicates, 95% interval)
from the runs' saved test predictions, so one seed still says whether a difference is more than noise.

Runs are `ctrscale compare` folders named LABEL-SUFFIX-s0 (results/ml1m-peer/queue.sh writes them): `full` (every
field), `norating` (no history rating), `notime` (no hour and weekday), and LABEL-s0 (FuxiCTR's features: all three
dropped); a model without its `full` run is skipped, a missing dropped run leaves its cells empty.

    python benchmarks/feature_groups.py /tmp/ml1m-peer --models mlp din suan lightsuan-distilled sparsectr est fat \
        --out results/ml1m-peer/feature_groups.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ctrscale import metrics
from ctrscale.reports import markdown_table

GROUPS = {"norating": "the history rating", "notime": "hour and weekday", "": "all three (FuxiCTR's features)"}


def test_predictions(run: Path) -> dict[str, np.ndarray]:
    z = np.load(run / "test_predictions.npz")
    order = np.argsort(z["row"], kind="stable")  # align two runs row by row
    return {k: z[k][order] for k in ("row", "prob", "label", "user")}


def compare(full: Path, dropped: Path) -> dict:
    a, b = test_predictions(full), test_predictions(dropped)
    if not np.array_equal(a["row"], b["row"]) or not np.array_equal(a["label"], b["label"]):
        raise SystemExit(f"{full} and {dropped}: not the same test rows; compare runs on the same dataset")
    return metrics.paired_bootstrap(a["label"], a["prob"], b["prob"], a["user"], n_boot=1000, seed=0)


def cell(d: dict) -> str:
    lo, hi = d["ci95"]
    return f"{d['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="the compare folder holding the runs (with test_predictions.npz)")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if not args.runs.is_dir():
        raise SystemExit(f"{args.runs}: no such folder; give the `ctrscale compare` folder holding the runs")
    rows, record = [], {}
    for label in args.models:
        full = args.runs / f"{label}-full-s0"
        if not (full / "results.json").is_file():
            print(f"{label}: no finished {full.name}; skipped")
            continue
        res = json.loads((full / "results.json").read_text())["test"]
        rec = {"full": {"auc": res["auc"], "gauc": res["gauc"]}}
        row = [label, f"{res['auc']:.4f} / {res['gauc']:.4f}"]
        for suffix, what in GROUPS.items():
            dropped = args.runs / (f"{label}-{suffix}-s0" if suffix else f"{label}-s0")
            if (dropped / "test_predictions.npz").is_file():
                boot = compare(full, dropped)
                rec[what] = {k: boot[k] for k in ("auc", "gauc")}
                row += [cell(boot["auc"]), cell(boot["gauc"])]
            else:
                row += ["", ""]
        record[label] = rec
        rows.append(row)
    head = ["model", "full features: AUC / GAUC"]
    for what in GROUPS.values():
        head += [f"ΔAUC from {what}", f"ΔGAUC from {what}"]
    md = ("Test AUC/GAUC on ml1m-u2999-ctr-v1, seed 0; each Δ is full minus the run without the group, with the "
          "95% interval of a paired bootstrap over users (1000 replicates)\n\n" + markdown_table(rows, head) + "\n")
    print(md)
    if args.out:
        args.out.write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
