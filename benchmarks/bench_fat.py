"""FAT: what caching the generated matrices saves at serving, and the projection parameters at the paper's scale.

1. Inference of one FAT (hypernetwork projections) with the per-field matrices generated in every forward vs
   cached by `freeze_generated()`: counted FLOPs and interleaved median time per batch of B impressions. The
   generation costs 3 * F * M * d^2 multiply-adds per layer whatever B is, so it weighs most on small batches.
2. Parameters producing the Q/K/V projections (all layers) for full per-field matrices, the hypernetwork, the
   naive field-pair matrices and shared matrices, at F in {100, 300} fields and d in {128, 256}, 4 layers.

    python benchmarks/bench_fat.py [--repeats 7]   -> benchmarks/results/fat.json
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from common import SPEC, interleaved_medians, random_batch, write

from ctrscale.accounting import inference_flops
from ctrscale.models.fat import projection_parameters
from ctrscale.models.registry import build_model


def serving_rows(dims, batches, repeats: int) -> list[dict]:
    rows = []
    for dim in dims:
        torch.manual_seed(0)
        generating = build_model(SPEC, {"name": "fat", "dim": dim, "layers": 2}).eval()
        frozen = copy.deepcopy(generating).freeze_generated()
        for b in batches:
            batch = random_batch(b, 50, torch.device("cpu"))
            with torch.no_grad():
                torch.testing.assert_close(frozen(batch), generating(batch), rtol=0, atol=0)
                t_gen, t_frozen = interleaved_medians([lambda m=m: m(batch) for m in (generating, frozen)], repeats)
            f_gen, f_frozen = inference_flops(generating, batch), inference_flops(frozen, batch)
            rows.append({"dim": dim, "batch": b, "flops_generating": f_gen, "flops_frozen": f_frozen,
                         "flops_ratio": f_frozen / f_gen, "seconds_generating": t_gen, "seconds_frozen": t_frozen,
                         "time_ratio": t_frozen / t_gen})
            print(rows[-1])
    return rows


def parameter_rows() -> list[dict]:
    rows = []
    for fields in (100, 300):
        for dim in (128, 256):
            counts = {m: projection_parameters(m, fields, dim, layers=4) for m in ("shared", "full", "hyper", "pair")}
            rows.append({"fields": fields, "dim": dim, "layers": 4, **counts,
                         "full_over_hyper": counts["full"] / counts["hyper"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fat.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    write({"serving": serving_rows((64, 256), (1, 60, 1000), args.repeats), "projection_parameters": parameter_rows(),
           "fields_in_serving_spec": len(SPEC.sparse) + 1}, args.out)


if __name__ == "__main__":
    main()
