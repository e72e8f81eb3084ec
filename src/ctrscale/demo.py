"""The main job: prepare the embedded synthetic data, train every registered model briefly, compare them.

Writes <out>/summary.md (the comparison table), <out>/valid_auc.png (validation AUC per epoch),
<out>/results.json and one run folder per model under <out>/runs/; then exports the best model (test AUC) as a
servable bundle to <out>/bundle and scores one test request of raw values through the Scorer, printing its
latency."""
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
    serve_best(out, results, path, overwrite, progress)
    return results


def serve_best(out: Path, results: list[RunResult], data_path: Path, overwrite: bool, progress: bool) -> dict:
    """Export the best run and score one test request through the Scorer, as a deployment would."""
    import time

    import numpy as np

    from .data.dataset import PreparedDataset
    from .serving import Scorer, export_bundle
    from .serving.bundle import is_bundle
    from .serving.replay import RawDecoder
    best = max(results, key=lambda r: r.test["auc"])
    run = out / "runs" / best.model
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
    summary = {"model": best.model, "bundle": str(bundle), "candidates": len(res.scores),
               "history": len(request.get("history", {}).get("time", [])), "latency_ms": round(ms, 2),
               "timing_ms": res.timing_ms, "scores": [round(float(x), 4) for x in res.scores[:5]]}
    (out / "serving.json").write_text(json.dumps(summary, indent=1))
    if progress:
        print(f"\nbest model {best.model} exported to {bundle}; one request ({summary['candidates']} candidates, "
              f"{summary['history']} behaviors) scored in {ms:.1f} ms through the Scorer: {summary['scores']}\n"
              f"serve it: ctrscale serve {bundle}")
    return summary


def table_row(r: RunResult) -> list[str]:
    t = r.test
    return [r.model, f"{t['auc']:.4f}", f"{t.get('gauc', float('nan')):.4f}", f"{t['logloss']:.4f}",
            f"{r.params['dense']:,}", f"{r.inference_gflops_per_60:.4f}", f"{r.train_impressions_per_s:,.0f}"]
