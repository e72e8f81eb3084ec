"""Replicated vs row-sharded embedding tables under torchrun (gloo, CPU): per-rank memory, throughput, metrics.

The same DIN run (synthetic data with large vocabularies, one epoch) in one process, in two processes with
replicated tables (DDP), and in two with `train.embedding_sharding=row`. Reported per run: test AUC/GAUC, training
impressions/s, each rank's peak resident memory (VmHWM), and the bytes each rank holds for embedding tables
with their gradients and Adam moments (4 copies of its rows).

    python benchmarks/bench_sharding.py [--embed-dim 128]      -> benchmarks/results/sharding.json
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write

from ctrscale.train.result import RunResult

OPTIONS = "{impressions: 100000, n_users: 200000, n_items: 100000}"


def run(name: str, out: Path, nproc: int, extra: list[str], dim: int) -> dict:
    args = ["train", f"name={name}", f"out_dir={out}", "data.name=synthetic", f"data.options={OPTIONS}",
            "data.max_len=50", "data.batch_size=1024", "train.epochs=1", "train.progress=false",
            "model.name=din", f"model.embed_dim={dim}", f"train.threads={2 // nproc}", *extra]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    subprocess.run([*launcher, "-m", "ctrscale.cli", *args], check=True, capture_output=True, text=True)
    r = RunResult.read(out / name / "results.json")
    return {"processes": nproc, "tables": "row" if r.row_sharded else "replicated",
            "test_auc": r.test["auc"], "test_gauc": r.test["gauc"],
            "impressions_per_s": r.train_impressions_per_s, "peak_rss_mib_per_rank": r.peak_rss_mib,
            "embedding_params": r.params["embedding"],
            "embedding_state_mib_per_rank": 4 * 4 * max(r.embedding_params_held) / 2 ** 20}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--embed-dim", type=int, default=128)
    args = p.parse_args()
    os.environ.setdefault("CTRSCALE_HOME", str(Path(tempfile.gettempdir()) / "ctrscale-bench-home"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        results = [run("one", out, 1, [], args.embed_dim),
                   run("replicated", out, 2, [], args.embed_dim),
                   run("row", out, 2, ["train.embedding_sharding=row"], args.embed_dim)]
    for r in results:
        print(f"{r['processes']} x {r['tables']:10s} AUC {r['test_auc']:.4f} GAUC {r['test_gauc']:.4f} "
              f"{r['impressions_per_s']:8.0f} imp/s  peak RSS/rank {r['peak_rss_mib_per_rank']} MiB  "
              f"tables+grads+Adam/rank {r['embedding_state_mib_per_rank']:.1f} MiB")
    write({"embed_dim": args.embed_dim, "data": OPTIONS, "runs": results},
          Path(__file__).parent / "results" / "sharding.json")


if __name__ == "__main__":
    main()
