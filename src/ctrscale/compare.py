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
sooner).

Registry defaults give the models different sizes (embed_dim 8 to 32, dense parameters over 20x apart), so the
table gives each model's dense and embedding parameters, and a warning (before training, from each model built on
the meta device, and in the report) names the models when either differs by more than 2x. `--embed-dim N` sets one
embedding width for every run, after the entries' own overrides; a model without an `embed_dim` key is refused
rather than left at its own width, the very mismatch the option removes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .accounting import count_params
from .data.catalog import open_run_data
from .errors import ConfigError, CtrscaleError
from .models.registry import build_model
from .reports import markdown_table, plot_epoch_curves
from .train.config import RunConfig, load_config
from .train.loop import reuse_or_fit
from .train.result import RunResult


def run_compare(data: str, models: list[str], seeds: list[int], out: Path, overrides: list[str] = (),
                config: str | None = None, progress: bool = True, overwrite: bool = False,
                embed_dim: int | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    plans: list[tuple[str, list[RunConfig]]] = []  # (label, its config per seed), all checked before any training
    for entry in models:
        label, own = parse_model_entry(entry)
        base = [f"data.name={data}", f"train.progress={str(progress).lower()}", *overrides, *own]
        if embed_dim is not None:
            check_embed_dim(label, load_config(config, base))
            base.append(f"model.embed_dim={embed_dim}")  # last: it wins over the entry's own embed_dim
        plans.append((label, [load_config(config, [f"name={label}-s{seed}", f"out_dir={out}", f"train.seed={seed}",
                                                   *base]) for seed in seeds]))
    sizes = {label: planned_params(cfgs[0]) for label, cfgs in plans}
    if all(sizes.values()) and (warning := size_warning(sizes, embed_dim)):
        print(f"warning: {warning}", flush=True)
    runs: dict[str, list[RunResult]] = {}
    for label, cfgs in plans:
        for cfg in cfgs:
            if progress:
                print(f"== {label}, seed {cfg.train.seed} ({cfg.run_dir})", flush=True)
            runs.setdefault(label, []).append(reuse_or_fit(cfg, overwrite))
    report = summarize(runs, out, embed_dim)
    (out / "comparison.json").write_text(json.dumps(report, indent=1))
    (out / "comparison.md").write_text(report["markdown"])
    plot_epoch_curves(report["valid_by_epoch"], out / "valid_by_epoch.png", ("auc", "gauc"))
    print(report["markdown"])
    print(f"comparison written to {out}/comparison.md (also comparison.json, valid_by_epoch.png); runs in {out}/")
    return report


def check_embed_dim(label: str, cfg: RunConfig) -> None:
    """--embed-dim needs an `embed_dim` key in every model's config (FFM's width is its per-field-pair latent_dim)."""
    if not hasattr(cfg.model.config, "embed_dim"):
        raise ConfigError(f"--embed-dim: model entry {label!r} (model {cfg.model_name}) has no embed_dim setting "
                          f"(see `ctrscale ls -v`); leave it out of this comparison or compare without --embed-dim")


def planned_params(cfg: RunConfig) -> dict[str, int] | None:
    """The parameter counts of cfg's model, built on the meta device (shapes, no memory or init), so that a size
    mismatch is told before hours of training; None for a model that cannot be built there (the report still
    warns, from the runs)."""
    data = open_run_data(cfg.data)
    try:
        with torch.device("meta"):
            return count_params(build_model(data.spec, cfg.model, content=data.content()))
    except CtrscaleError:
        raise  # a setting the run would refuse too: better now than after the models before it trained
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel, or one that reads values
        return None


def size_warning(sizes: dict[str, dict[str, int]], embed_dim: int | None = None) -> str | None:
    """One line when the models' dense or embedding parameters differ by more than 2x, naming the largest and the
    smallest of each: the comparison then weighs capacities as much as architectures. None within 2x."""
    gaps = []
    for kind in ("dense", "embedding"):
        big, small = max(sizes, key=lambda m: sizes[m][kind]), min(sizes, key=lambda m: sizes[m][kind])
        if sizes[big][kind] > 2 * sizes[small][kind]:
            gaps.append(f"{kind} params {sizes[big][kind]:,} ({big}) vs {sizes[small][kind]:,} ({small})")
    if not gaps:
        return None
    width = (f"every model is at embed_dim {embed_dim}" if embed_dim is not None else
             "--embed-dim N gives every model one embedding width")
    return (f"model sizes differ by more than 2x: {'; '.join(gaps)}; {width}; other sizes are set per model entry "
            f"(LABEL:model.KEY=VALUE)")


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


def summarize(runs: dict[str, list[RunResult]], out: Path, embed_dim: int | None = None) -> dict:
    models = list(runs)
    rows, table = [], {}
    for m in models:
        rs = runs[m]
        table[m] = {k: [r.test[k] for r in rs] for k in ("auc", "gauc", "logloss")}
        rows.append([m, str(len(rs)), _mean_std(table[m]["auc"]), _mean_std(table[m]["gauc"]),
                     _mean_std(table[m]["logloss"]), f"{rs[0].params['dense']:,}",
                     f"{rs[0].params['embedding']:,}", f"{rs[0].inference_gflops_per_60:.3f}",
                     f"{np.mean([r.best_epoch for r in rs]):.1f}"])
    warning = size_warning({m: runs[m][0].params for m in models}, embed_dim)  # from the runs: what trained
    width = f", embed_dim {embed_dim} for every model" if embed_dim is not None else ""
    md = [f"Test metrics, mean ± std over seeds ({runs[models[0]][0].dataset}, max_len "
          f"{runs[models[0]][0].max_len}{width})", "",
          markdown_table(rows, ["model", "seeds", "AUC", "GAUC", "logloss", "dense params", "embedding params",
                                "GFLOPs / 60", "best epoch"])]
    if warning:
        md += ["", f"**Warning**: {warning}."]
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
            "embed_dim": embed_dim, "size_warning": warning, "markdown": "\n".join(md) + "\n"}


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
