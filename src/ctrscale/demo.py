"""The main job: prepare the embedded synthetic data, train every registered model briefly, compare them.

Writes <out>/summary.md (the comparison table), <out>/valid_auc.png (validation AUC per epoch),
<out>/results.json and one run folder per model under <out>/runs/."""
from __future__ import annotations

import json
from pathlib import Path

from .data import catalog
from .models.registry import entries
from .reports import markdown_table, plot_epoch_curves
from .train.config import load_config
from .train.loop import reuse_or_fit
from .train.result import RunResult

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
COLUMNS = ["model", "test AUC", "test GAUC", "test logloss", "dense params", "GFLOPs/60", "train imp/s"]


def run_demo(out: Path, epochs: int = 2, models: list[str] | None = None, options: dict | None = None,
             seed: int = 0, progress: bool = True, overwrite: bool = False) -> list[RunResult]:
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(DEMO_CONFIG)
    path, report = catalog.prepare("synthetic", **{**base.data.options, **(options or {})})
    if report is not None and progress:
        print((path / "report.md").read_text())
    results = []
    for name in models or sorted(entries()):
        cfg = load_config(DEMO_CONFIG, [f"name={name}", f"out_dir={out / 'runs'}", f"model.name={name}",
                                        f"data.path={path}", f"train.epochs={epochs}", f"train.seed={seed}",
                                        f"train.progress={str(progress).lower()}"])
        if progress:
            print(f"== {name}")
        results.append(reuse_or_fit(cfg, overwrite))  # reused, continued, or refused when settings differ
    rows = [table_row(r) for r in results]
    text = markdown_table(rows, COLUMNS)
    if progress:
        print(text)
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
    (out / "summary.md").write_text(
        f"# ctrscale demo: synthetic data ({path.name}), {epochs} epoch(s), seed {seed}\n\n{text}\n\n"
        "Test metrics use the weights with the best validation AUC. GFLOPs are counted by torch's FLOP counter "
        "on one inference batch of 60 impressions; impressions/s is training throughput on this machine.\n\n"
        "![validation AUC per epoch](valid_auc.png)\n")
    plot_epoch_curves({r.model: r.epochs for r in results}, out / "valid_auc.png")
    return results


def table_row(r: RunResult) -> list[str]:
    t = r.test
    return [r.model, f"{t['auc']:.4f}", f"{t.get('gauc', float('nan')):.4f}", f"{t['logloss']:.4f}",
            f"{r.params['dense']:,}", f"{r.inference_gflops_per_60:.4f}", f"{r.train_impressions_per_s:,.0f}"]
