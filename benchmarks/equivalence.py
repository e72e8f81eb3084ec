"""Behaviour before and after a refactor: record, then compare.

    python benchmarks/equivalence.py record --out /tmp/eqv          # on the commit before the change
    python benchmarks/equivalence.py compare --out /tmp/eqv         # after: outputs 1e-6, metrics 1e-4

`record` prepares a small synthetic dataset and ml100k (when ../shared/data has it) into --out, builds every
registered model (and the variants that take other code paths) with a fixed seed, saves its weights and its outputs
on fixed batches (pointwise forward and request scoring), and runs a fixed-seed one-epoch training run of each on
the synthetic data, saving its validation and test metrics. `compare` loads the saved weights (so parameter names
must not change: old checkpoints keep loading), recomputes the outputs on the same batches and reruns the short
runs, and prints the largest differences. It exits non-zero when any exceeds its tolerance.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

VARIANTS = {  # model -> extra configs that take other code paths than the default
    "sparsectr": [{"attention": "full"}, {"attention": "dilated"}, {"attention": "linear"},
                  {"chunking": "fixed"}, {"chunking": "similarity"}, {"encoding": "t5"}, {"encoding": "alibi"},
                  {"encoding": "rope"}, {"encoding": "hstu"}, {"encoding": "none"}],
    "est": [{"attention": "lca"}, {"attention": "full"}, {"csa_value": True}],
    "suan": [{"target_aware": False}, {"attention_bias": False}, {"norm": "layer", "prenorm": False},
             {"ffn": "relu", "afnet": False}],
    "onetrans": [{"candidate_sequence": "din"}, {"candidate_sequence": "full"}],
    "fat": [{"projections": "full"}, {"projections": "pair"}, {"alpha": "per_head"}],
    "mlp": [{"inputs": "pooled"}, {"inputs": "fields"}],
    "autoint": [{"inputs": "fields"}],
}
OUT_TOL, METRIC_TOL = 1e-6, 1e-4


def configs() -> list[dict]:
    from ctrscale.models.registry import entries
    out = []
    for name in sorted(entries()):
        out.append({"name": name})
        out += [{"name": name, **v} for v in VARIANTS.get(name, [])]
    return out


def key(model: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in model.items())


def datasets(out: Path) -> dict:
    from ctrscale.data.dataset import PreparedDataset
    from ctrscale.data.synthetic import prepare_synthetic
    found = {}
    syn = out / "data" / "synthetic"
    if not syn.exists():
        prepare_synthetic(syn, n_users=300, n_items=200, impressions=6000, seed=0)
    found["synthetic"] = PreparedDataset(syn)
    raw = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
    if raw.is_dir():
        from ctrscale.data.movielens import prepare_movielens
        ml = out / "data" / "ml100k"
        if not ml.exists():
            prepare_movielens("ml100k-ctr-v1", raw, ml)
        found["ml100k"] = PreparedDataset(ml)
    return found


def model_inputs(model):
    """The GSU setting the loader must use for this model: its declared needs (after the refactor), else the
    attribute the code before it set."""
    declared = getattr(model, "needs", None)
    if declared is not None:
        return declared.cand_seq
    return getattr(model, "candidate_sequence", None)


def batches(data, model):
    from ctrscale.batch import RequestBatch
    from ctrscale.data.loader import Loader, LoaderConfig
    cand = model_inputs(model)
    point = next(iter(Loader(data, "valid", LoaderConfig(batch_size=48, max_len=40, shuffle=True, cand_seq=cand),
                             seed=3)))
    req = next(iter(Loader(data, "valid", LoaderConfig(batch_size=48, max_len=40, shuffle=True, listwise=True,
                                                       cand_seq=cand), seed=4)))
    assert isinstance(req, RequestBatch)
    return point, req


@torch.no_grad()
def outputs(model, data) -> dict:
    point, req = batches(data, model)
    return {"forward": model(point), "score_request": model.score_request(req)[req.mask]}


def short_run(model: dict, data_dir: Path, out: Path) -> dict:
    from ctrscale.train.config import load_config
    from ctrscale.train.loop import fit
    name = key(model).replace("=", "-").replace(",", "_")
    cfg = load_config(base={"name": name, "out_dir": str(out), "model": model,
                            "data": {"name": None, "path": str(data_dir), "batch_size": 256, "max_len": 30},
                            "train": {"epochs": 1, "seed": 0, "threads": 1, "progress": False, "device": "cpu"}})
    res = fit(cfg, overwrite=True)
    return {"valid": res.valid, "test": res.test}


def record(out: Path, runs: bool) -> None:
    from ctrscale.models.registry import build_model
    torch.set_num_threads(1)
    data = datasets(out)
    saved = {}
    for model_cfg in configs():
        for dname, d in data.items():
            torch.manual_seed(0)
            model = build_model(d.spec, model_cfg, content=d.content()).eval()
            saved[f"{dname}/{key(model_cfg)}"] = {"state": model.state_dict(), "out": outputs(model, d)}
        print("recorded", key(model_cfg), flush=True)
    torch.save(saved, out / "outputs.pt")
    if runs:
        metrics = {key(m): short_run(m, out / "data" / "synthetic", out / "runs-before") for m in configs()}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))


def compare(out: Path, runs: bool) -> int:
    from ctrscale.models.registry import build_model
    torch.set_num_threads(1)
    data = datasets(out)
    saved = torch.load(out / "outputs.pt", weights_only=False)
    worst, rows = 0.0, []
    for model_cfg in configs():
        for dname, d in data.items():
            rec = saved[f"{dname}/{key(model_cfg)}"]
            model = build_model(d.spec, model_cfg, content=d.content()).eval()
            model.load_state_dict(rec["state"])
            now = outputs(model, d)
            diff = max(float((now[k] - rec["out"][k]).abs().max()) for k in rec["out"])
            worst = max(worst, diff)
            rows.append((f"{dname}/{key(model_cfg)}", diff))
    print("| model (dataset/config) | max abs output difference |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v:.2e} |")
    failed = worst > OUT_TOL
    if runs:
        before = json.loads((out / "metrics.json").read_text())
        print("\n| model | valid AUC before | after | test AUC before | after | max metric difference |")
        print("|---|---|---|---|---|---|")
        for model_cfg in configs():
            k = key(model_cfg)
            now = short_run(model_cfg, out / "data" / "synthetic", out / "runs-after")
            was = before[k]
            diff = max(abs(now[s][m] - was[s][m]) for s in ("valid", "test") for m in was[s]
                       if isinstance(was[s][m], float))
            failed |= diff > METRIC_TOL
            print(f"| {k} | {was['valid']['auc']:.6f} | {now['valid']['auc']:.6f} | {was['test']['auc']:.6f} | "
                  f"{now['test']['auc']:.6f} | {diff:.2e} |", flush=True)
    print(f"\nlargest output difference {worst:.2e} (tolerance {OUT_TOL}); {'FAILED' if failed else 'equal'}")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("record", "compare"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-runs", action="store_true", help="outputs only, no short training runs")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.mode == "record":
        record(a.out, not a.no_runs)
        return 0
    return compare(a.out, not a.no_runs)


if __name__ == "__main__":
    sys.exit(main())
