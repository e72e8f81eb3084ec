"""Compare models over several seeds on one dataset, with paired tests (shared/spec/metrics.md).

    ctrscale compare --data ml100k-ctr-v1 --models mlp din --seeds 0 1 2 [key=value ...]

A model entry is a registered name or `label:key=value;key=value`, a labelled variant with its own overrides
(applied after the shared ones), e.g. `suan-L500:model.name=suan;data.max_len=500` or
`suan-E:model.name=suan;model.attention_bias=false`; without a `model` override the label's text before the first
'-' names the model. Each (label, seed) is an ordinary training run under <out>/<label>-s<seed> (finished runs are
reused only when their config equals the one asked for, and a stopped comparison continues; a run folder under
another config is refused, naming the setting, unless --overwrite retrains it). The report gives test AUC / GAUC /
logloss as mean ± std over seeds and, for each model against the first one, a paired t-test over seeds and a paired
bootstrap over users of the seed-averaged test predictions. A second table and `valid_by_epoch.png` give each
model's validation AUC / GAUC per epoch, averaged over the seeds that ran that epoch (early stopping may end a seed
sooner)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import metrics
from .errors import ConfigError
from .reports import markdown_table, plot_epoch_curves
from .train.config import load_config
from .train.loop import reuse_or_fit
from .train.result import RunResult


def run_compare(data: str, models: list[str], seeds: list[int], out: Path, overrides: list[str] = (),
                config: str | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[RunResult]] = {}
    for entry in models:
        model, own = parse_model_entry(entry)
        for seed in seeds:
            name = f"{model}-s{seed}"
            cfg = load_config(config, [f"name={name}", f"out_dir={out}", f"data.name={data}",
                                       f"train.seed={seed}", f"train.progress={str(progress).lower()}",
                                       *overrides, *own])
            if progress:
                print(f"== {model}, seed {seed} ({cfg.run_dir})", flush=True)
            res = reuse_or_fit(cfg, overwrite)
            runs.setdefault(model, []).append(res)
    report = summarize(runs, out)
    (out / "comparison.json").write_text(json.dumps(report, indent=1))
    (out / "comparison.md").write_text(report["markdown"])
    plot_epoch_curves(report["valid_by_epoch"], out / "valid_by_epoch.png", ("auc", "gauc"))
    print(report["markdown"])
    print(f"comparison written to {out}/comparison.md (also comparison.json, valid_by_epoch.png); runs in {out}/")
    return report


def parse_model_entry(entry: str) -> tuple[str, list[str]]:
    """'din' -> ('din', ['model.name=din']); 'suan-L500:model.name=suan;data.max_len=500' -> the label and its
    overrides. The label is the run-folder prefix, so it must be a plain name."""
    label, sep, rest = entry.partition(":")
    if not sep or "=" in label or "{" in label:
        label, rest = entry, ""
    if not label or any(c in label for c in "/ \t"):
        raise ConfigError(f"model entry {entry!r}: the label must be a plain name (the run folder prefix)")
    own = [o.strip() for o in rest.split(";") if o.strip()]
    if not any(o.startswith(("model.name=", "model=")) for o in own):
        own.insert(0, f"model.name={label.split('-')[0]}")
    return label, own


def _mean_std(xs) -> str:
    xs = np.asarray(xs, float)
    return f"{xs.mean():.4f} ± {xs.std(ddof=1):.4f}" if len(xs) > 1 else f"{xs.mean():.4f}"  # one seed: no spread


def summarize(runs: dict[str, list[RunResult]], out: Path) -> dict:
    models = list(runs)
    rows, table = [], {}
    for m in models:
        rs = runs[m]
        table[m] = {k: [r.test[k] for r in rs] for k in ("auc", "gauc", "logloss")}
        rows.append([m, str(len(rs)), _mean_std(table[m]["auc"]), _mean_std(table[m]["gauc"]),
                     _mean_std(table[m]["logloss"]), f"{rs[0].params['dense']:,}",
                     f"{rs[0].inference_gflops_per_60:.3f}", f"{np.mean([r.best_epoch for r in rs]):.1f}"])
    md = [f"Test metrics, mean ± std over seeds ({runs[models[0]][0].dataset}, max_len "
          f"{runs[models[0]][0].max_len})", "",
          markdown_table(rows, ["model", "seeds", "AUC", "GAUC", "logloss", "dense params", "GFLOPs / 60",
                                "best epoch"])]
    tests = {}
    base = models[0]
    preds = {m: _mean_predictions(out, runs[m]) for m in models}
    for m in models[1:]:
        seed_auc = metrics.paired_seed_test(table[m]["auc"], table[base]["auc"])
        seed_gauc = metrics.paired_seed_test(table[m]["gauc"], table[base]["gauc"])
        boot = None
        if preds[m] is not None and preds[base] is not None:
            p, b = preds[m], preds[base]
            boot = metrics.paired_bootstrap(p["label"], p["prob"], b["prob"], p["user"], n_boot=1000, seed=0)
        tests[f"{m} - {base}"] = {"auc_seeds": seed_auc, "gauc_seeds": seed_gauc, "bootstrap_users": boot}
        md += ["", f"**{m} − {base}**: AUC diff {seed_auc['mean_diff']:+.4f} {_test(seed_auc)}; GAUC diff "
               f"{seed_gauc['mean_diff']:+.4f} {_test(seed_gauc)}."]
        if boot:
            md.append(f"Bootstrap over users of the seed-averaged predictions: AUC diff "
                      f"{boot['auc']['diff']:+.4f} CI {_ci(boot['auc']['ci95'])}, GAUC diff "
                      f"{boot['gauc']['diff']:+.4f} CI {_ci(boot['gauc']['ci95'])}.")
    curves = {m: epoch_means([r.epochs for r in rs]) for m, rs in runs.items()}
    n_epochs = max(len(c) for c in curves.values())
    cells = {m: [f"{r['valid_auc']:.4f} / {r['valid_gauc']:.4f}" for r in c] for m, c in curves.items()}
    md += ["", "Validation AUC / GAUC per epoch, mean over the seeds that ran it (![curves](valid_by_epoch.png))", "",
           markdown_table([[m] + cs + [""] * (n_epochs - len(cs)) for m, cs in cells.items()],
                          ["model"] + [f"epoch {e}" for e in range(1, n_epochs + 1)])]
    return {"runs": {m: [{k: getattr(r, k) for k in ("seed", "test", "valid", "best_epoch", "params")} for r in rs]
                     for m, rs in runs.items()}, "tests": tests, "valid_by_epoch": curves,
            "markdown": "\n".join(md) + "\n"}


def epoch_means(runs: list[list[dict]]) -> list[dict]:
    """Validation AUC / GAUC at each epoch, averaged over the runs (their `epochs`) that reached it."""
    out = []
    for e in range(1, max(len(epochs) for epochs in runs) + 1):
        rows = [epochs[e - 1] for epochs in runs if len(epochs) >= e]
        out.append({"epoch": e, "seeds": len(rows), **{f"valid_{k}": float(np.mean([x[f"valid_{k}"] for x in rows]))
                                                       for k in ("auc", "gauc")}})
    return out


def _test(t: dict) -> str:
    if t["note"]:
        return f"({t['note']})"
    return f"(paired t over seeds p = {t['p_value']:.3g}, 95% CI {_ci(t['ci95'])})"


def _ci(ci) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _mean_predictions(out: Path, rs: list[RunResult]) -> dict | None:
    files = [out / r.name / "test_predictions.npz" for r in rs]
    if not all(f.exists() for f in files):
        return None
    loaded = [np.load(f) for f in files]
    return {"label": loaded[0]["label"], "user": loaded[0]["user"],
            "prob": np.mean([x["prob"] for x in loaded], axis=0)}
