"""A paper-style comparison table over finished runs: test AUC and GAUC (mean ± std over seeds), RelaImpr over a
base model, paired t-tests over seeds against chosen models, dense parameters, counted inference GFLOPs per 60
impressions whose histories fill max_len (flops_at_length.py), and training minutes.

Runs are run folders named LABEL-sSEED (as `ctrscale compare` writes them), found in the given folders; the
columns follow --order (the paper's order). Seeds pair by number.

    python benchmarks/paper_table.py results/ml1m-sparsectr results/ml1m-table2 --base din \
        --against sparsectr din --order din can softsim hardsim eta twinv2 bst hstu longer suan sparsectr \
        --out results/ml1m-table2/table2.md
    python benchmarks/paper_table.py results/ml1m-peer --order mlp din suan lightsuan-distilled sparsectr est fat \
        --base mlp --against mlp --reference "FuxiCTR DNN" 0.7720 0.0031 0.7434 --out results/ml1m-peer/table.md
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from flops_at_length import gflops_at_max_len

from ctrscale import metrics
from ctrscale.reports import markdown_table


def find_runs(folders: list[Path], labels: list[str]) -> dict[str, dict[int, Path]]:
    """label -> seed -> run folder holding results.json; a label found twice for one seed is an error."""
    out: dict[str, dict[int, Path]] = {lab: {} for lab in labels}
    for folder in folders:
        for res in sorted(folder.glob("*-s*/results.json")):
            m = re.fullmatch(r"(.+)-s(\d+)", res.parent.name)
            if m and m[1] in out:
                seed = int(m[2])
                if seed in out[m[1]]:
                    raise SystemExit(f"{m[1]} seed {seed}: found in {out[m[1]][seed]} and {res.parent}; keep one")
                out[m[1]][seed] = res.parent
    missing = [lab for lab, runs in out.items() if not runs]
    if missing:
        raise SystemExit(f"no finished runs for {', '.join(missing)} in {', '.join(map(str, folders))}")
    return out


def _mean_std(xs: list[float]) -> str:
    return f"{np.mean(xs):.4f} ± {np.std(xs, ddof=1):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def _paired(a: dict[int, float], b: dict[int, float]) -> str:
    seeds = sorted(set(a) & set(b))
    t = metrics.paired_seed_test([a[s] for s in seeds], [b[s] for s in seeds])
    if t["note"]:
        return f"{t['mean_diff']:+.4f} (n={len(seeds)})"
    return f"{t['mean_diff']:+.4f} (p={t['p_value']:.2g})"


def _versus_reference(mean: float, ref: float, ref_std: float | None) -> str:
    """Difference from a published figure; `beyond its std` when it exceeds the figure's spread over seeds."""
    d = mean - ref
    return f"{d:+.4f}" + (" (beyond its std)" if ref_std is not None and abs(d) > ref_std else "")


def table(runs: dict[str, dict[int, Path]], base: str, against: list[str], flops: bool,
          reference: tuple[str, float, float, float] | None = None) -> tuple[str, dict]:
    """`reference`: (name, AUC, AUC std, GAUC) of a figure from elsewhere (a peer's), to show each model's distance."""
    res = {lab: {s: json.loads((p / "results.json").read_text()) for s, p in by_seed.items()}
           for lab, by_seed in runs.items()}
    auc = {lab: {s: r["test"]["auc"] for s, r in rs.items()} for lab, rs in res.items()}
    gauc = {lab: {s: r["test"]["gauc"] for s, r in rs.items()} for lab, rs in res.items()}
    base_auc = float(np.mean(list(auc[base].values())))
    rows, record = [], {}
    for lab, rs in res.items():
        first = rs[min(rs)]
        gf = gflops_at_max_len(runs[lab][min(rs)] / "config.yaml")[1] if flops else None
        minutes = [r["train_seconds"] / 60 for r in rs.values()]
        rec = {"seeds": sorted(rs), "auc": list(auc[lab].values()), "gauc": list(gauc[lab].values()),
               "rela_impr_pct": metrics.rela_impr(float(np.mean(list(auc[lab].values()))), base_auc),
               "dense_params": first["params"]["dense"], "gflops_per_60_at_max_len": gf,
               "train_minutes": float(np.mean(minutes)), "max_len": first["max_len"],
               "listwise": first["config"]["data"].get("listwise")}
        for other in against:
            if other != lab:
                rec[f"auc_vs_{other}"] = _paired(auc[lab], auc[other])
                rec[f"gauc_vs_{other}"] = _paired(gauc[lab], gauc[other])
        ref_cols = []
        if reference:
            name, ref_auc, ref_std, ref_gauc = reference
            rec[f"auc_vs_{name}"] = float(np.mean(rec["auc"])) - ref_auc
            rec[f"gauc_vs_{name}"] = float(np.mean(rec["gauc"])) - ref_gauc
            ref_cols = [_versus_reference(float(np.mean(rec["auc"])), ref_auc, ref_std),
                        _versus_reference(float(np.mean(rec["gauc"])), ref_gauc, None)]
        record[lab] = rec
        rows.append([lab, str(len(rs)), _mean_std(rec["auc"]), _mean_std(rec["gauc"]), f"{rec['rela_impr_pct']:+.2f}%",
                     *ref_cols,
                     *[rec.get(f"auc_vs_{o}", "") for o in against], *[rec.get(f"gauc_vs_{o}", "") for o in against],
                     f"{rec['dense_params']:,}", "" if gf is None else f"{gf:.3f}", f"{rec['train_minutes']:.1f}"])
    ref_head = []
    if reference:
        name, ref_auc, ref_std, ref_gauc = reference
        ref_head = [f"ΔAUC vs {name} ({ref_auc:.4f} ± {ref_std:.4f})", f"ΔGAUC vs {name} ({ref_gauc:.4f})"]
    cols = ["model", "seeds", "AUC", "GAUC", f"RelaImpr vs {base}", *ref_head, *[f"ΔAUC vs {o}" for o in against],
            *[f"ΔGAUC vs {o}" for o in against], "dense params", "GFLOPs/60 at max_len", "train min"]
    return markdown_table(rows, cols), record


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--order", nargs="+", required=True, help="run labels, in the table's order")
    ap.add_argument("--base", required=True, help="the RelaImpr base")
    ap.add_argument("--against", nargs="*", default=[], help="paired t-tests over seeds against these")
    ap.add_argument("--no-flops", action="store_true", help="skip counting GFLOPs at max_len (needs the dataset)")
    ap.add_argument("--reference", nargs=4, metavar=("NAME", "AUC", "AUC_STD", "GAUC"),
                    help="a figure from elsewhere (e.g. FuxiCTR's) to show each model's distance from")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    reference = None
    if args.reference:
        try:
            reference = (args.reference[0], *map(float, args.reference[1:]))
        except ValueError:
            raise SystemExit(f"--reference {' '.join(args.reference)}: AUC, AUC_STD and GAUC must be numbers") from None
    for lab in [args.base, *args.against]:
        if lab not in args.order:
            raise SystemExit(f"{lab}: not among --order ({', '.join(args.order)})")
    md, record = table(find_runs(args.folders, args.order), args.base, args.against, not args.no_flops, reference)
    print(md)
    if args.out:
        args.out.write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
