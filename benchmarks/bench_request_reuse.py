"""Request scoring against independent impressions (issue 28): one request of N = 1000 candidates for a real test
user of ml1m-u2999 whose history is cut to its last H = 1000 behaviors, scored in-process by the Scorer (parse,
features, encode_user once, score_candidates; the user-state cache off), against the same candidates scored as
independent impressions (model(batch), the user side recomputed per candidate; timed on 100 and scaled), for each
model at its defaults with random weights (latency does not depend on the weights' values). Both timings come
from bench_serve.in_process, medians of repeats, one run on this machine.

    python benchmarks/bench_request_reuse.py [--models can softsim ...] [--out results/serving/request_reuse.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_serve import in_process, make_body, request_pool  # noqa: E402
from common import write  # noqa: E402

from ctrscale.data import catalog  # noqa: E402
from ctrscale.data.dataset import PreparedDataset  # noqa: E402
from ctrscale.reports import markdown_table  # noqa: E402
from ctrscale.serving import Scorer, export_bundle  # noqa: E402
from ctrscale.serving.replay import random_run  # noqa: E402

MODELS = {"din": ("din", []), "can": ("can", []), "softsim": ("sim", ["model.search=soft"]),
          "hardsim": ("sim", ["model.search=hard"]), "eta": ("eta", []), "twinv2": ("twinv2", []),
          "longer": ("longer", []), "mtgr": ("mtgr", []), "hstu": ("hstu", [])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--history", type=int, default=1000)
    ap.add_argument("--out", default="results/serving/request_reuse.json")
    ap.add_argument("--work", default="runs/bench-request-reuse", help="where the runs and bundles are written")
    args = ap.parse_args(argv)
    data = PreparedDataset(catalog.prepare("ml1m-u2999-ctr-v1")[0])
    base, catalogue = request_pool(data)
    body = json.dumps(make_body(base[0], catalogue, args.candidates, args.history, np.random.default_rng(0))).encode()
    work = Path(args.work)
    out = {"setup": {"data": "ml1m-u2999-ctr-v1", "max_len": args.history, "candidates": args.candidates,
                     "weights": "random"}, "models": {}}
    rows = []
    for label in args.models:
        name, overrides = MODELS[label]
        run = random_run(work / "runs", data, name, f"data.max_len={args.history}", f"name={label}", *overrides)
        scorer = Scorer(export_bundle(run, work / "bundles" / label, overwrite=True))
        res = in_process(scorer, body, repeats=3)
        res["reuse_speedup"] = round(res["independent_impressions_ms"] / res["scorer_ms"], 1)
        out["models"][label] = res
        rows.append([label, f"{res['scorer_ms']:.1f}", f"{res['independent_impressions_ms']:.1f}",
                     f"{res['reuse_speedup']:.1f}x"])
        write(out, args.out)
    md = markdown_table(rows, ["model", "request scoring ms", "independent impressions ms", "reuse speed-up"])
    Path(args.out).with_suffix(".md").write_text(
        f"One request, {args.candidates} candidates, history {args.history} (ml1m-u2999, random weights)\n\n{md}\n")
    print(md)


if __name__ == "__main__":
    main()
