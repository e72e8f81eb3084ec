"""EST (LCA + CSA) vs its Full-Attention variant (spec/benchmarks.md #1 and #2), CPU or GPU, ratios of
interleaved medians in one run.

The data shape is the issue's: n_N = 16 non-behavioral tokens (15 fields + SimTier), R_c of K_c = 50 behaviors,
a frozen content table (random unit vectors); R_u of L_u behaviors.
#1 est (and lca) vs full at L_u in {128 .. 2048}, the library's default size: forward+backward and inference time,
   peak memory (a fresh process per point), counted-FLOPs ratio; "realised" = (1 - time ratio) / (1 - FLOPs ratio).
#2 request scoring: one user with L_u = 1000 and C in {1, 10, 100, 1000} candidates (each with its own R_c):
   R_u encoded once + per-candidate work, against C independent impressions; Full-Attention's independent
   scoring beside it (it cannot reuse: its behaviors attend to the candidate's tokens).
#3 counted FLOPs at the paper's shape (6 layers, d = 128, L_u = 300, K_c = 50), per impression and per request of
   60 candidates (the paper's "GFLOPs per batch of 60"; EST encodes R_u once per request).

    python benchmarks/bench_est.py --out benchmarks/results/est.json [--quick]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from common import median_time, sparse_benchmark_main

from ctrscale.accounting import inference_flops
from ctrscale.batch import Batch
from ctrscale.batch import DataSpec
from ctrscale.models.registry import build_model

K_C, CONTENT_DIM, ITEMS = 50, 64, 5000
FIELDS = tuple(f"f{i}" for i in range(13)) + ("item_id", "category")
SPEC = DataSpec(sparse=FIELDS, dense=(), hist=("item_id", "category", "action"),
                roles={**{f: "user" for f in FIELDS[:10]}, **{f: "context" for f in FIELDS[10:13]},
                       "item_id": "item", "category": "item"},
                field_vocab={**{f: f for f in FIELDS}, "hist.item_id": "item_id", "hist.category": "category",
                             "hist.action": "hist.action"},
                vocab_sizes={**{f: 100 for f in FIELDS[:13]}, "item_id": ITEMS, "category": 50, "hist.action": 4},
                content_dim=CONTENT_DIM, content_key="item_id")


def content_table() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(ITEMS, CONTENT_DIM, generator=g)


def make_model(config: dict, device, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(SPEC, {"name": "est", **config}, content=content_table()).to(device)


def _sequence(b: int, n: int, g) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.stack([torch.randint(2, ITEMS, (b, n), generator=g), torch.randint(2, 50, (b, n), generator=g),
                       torch.randint(2, 4, (b, n), generator=g)], -1)
    return ids, 1_700_000_000 + torch.cumsum(torch.randint(1, 50_000, (b, n), generator=g), 1)


def make_batch(b: int, n: int, device, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    hist, times = _sequence(b, n, g)
    cand_hist, cand_times = _sequence(b, K_C, g)
    sparse = torch.stack([torch.randint(2, SPEC.vocab_sizes[SPEC.field_vocab[f]], (b,), generator=g)
                          for f in SPEC.sparse], -1)
    return Batch(sparse=sparse, dense=torch.zeros(b, 0), hist=hist, hist_time=times, time=times[:, -1] + 10,
                 label=(torch.rand(b, generator=g) > 0.5).float(), user=torch.arange(b), request=torch.arange(b),
                 cand_hist=cand_hist, cand_hist_time=cand_times).to(device)


def pair(variant: str, device, size: dict | None = None):
    full = make_model({"attention": "full", **(size or {})}, device)
    sparse = make_model({"attention": variant, **(size or {})}, device, seed=1)
    sparse.load_state_dict(full.state_dict(), strict=False)  # the same weights where both have them
    return full, sparse


def _request(c: int, n: int, device):
    user = make_batch(1, n, device)
    cands = make_batch(c, 4, device, seed=1)
    cands.sparse[:, SPEC.sparse_of_role("user")] = user.sparse[:, SPEC.sparse_of_role("user")]
    rep = lambda t: t.expand(c, *t.shape[1:])  # noqa: E731
    flat = Batch(sparse=cands.sparse, dense=torch.zeros(c, 0, device=device), hist=rep(user.hist),
                 hist_time=rep(user.hist_time), time=rep(user.time), label=cands.label, user=rep(user.user),
                 request=rep(user.request), cand_hist=cands.cand_hist, cand_hist_time=cands.cand_hist_time)
    return user, flat


def scoring(device, n: int = 1000, counts=(1, 10, 100, 1000), repeats: int = 3) -> list[dict]:
    est, full = make_model({}, device).eval(), make_model({"attention": "full"}, device).eval()
    rows = []
    for c in counts:
        user, flat = _request(c, n, device)

        @torch.no_grad()
        def reuse():
            one = lambda t: t.unsqueeze(0)  # noqa: E731
            return est.score_candidates(est.encode_user(user), one(flat.sparse), one(flat.dense),
                                        one(flat.cand_hist), one(flat.cand_hist_time))[0]

        def independent(model, chunk: int = 25):  # chunks bound memory; the work is C full encodings either way
            with torch.no_grad():
                return torch.cat([model(flat.select(torch.arange(lo, min(c, lo + chunk), device=device)))
                                  for lo in range(0, c, chunk)])
        torch.testing.assert_close(reuse(), independent(est), rtol=1e-4, atol=1e-4)  # also the warm-up
        t_r, t_i = median_time(reuse, repeats, 0), median_time(lambda: independent(est), repeats, 0)
        t_f = median_time(lambda: independent(full), repeats, 1)
        rows.append({"model": "est", "L": n, "candidates": c, "seconds_reuse": t_r, "seconds_independent": t_i,
                     "speedup": t_i / t_r, "seconds_full_attention_independent": t_f,
                     "speedup_vs_full_attention": t_f / t_r})
        print(json.dumps(rows[-1]))
    return rows


def paper_shape_flops(device) -> dict:
    """Counted inference FLOPs at 6 layers, d = 128, n_N = 16, L_u = 300, K_c = 50."""
    size = {"layers": 6, "dim": 128, "heads": 4}
    full, est = pair("est", device, size)
    lca = make_model({"attention": "lca", **size}, device)
    full.eval(), est.eval(), lca.eval()
    batch = make_batch(60, 300, device)
    per_imp = {name: inference_flops(m, batch) / 60 for name, m in (("full", full), ("est", est), ("lca", lca))}
    user, flat = _request(60, 300, device)
    one = lambda t: t.unsqueeze(0)  # noqa: E731

    def request(m):
        return m.score_candidates(m.encode_user(user), one(flat.sparse), one(flat.dense), one(flat.cand_hist),
                                  one(flat.cand_hist_time))
    from ctrscale.accounting import _flops
    with torch.no_grad():
        per_req = {name: _flops(lambda m=m: request(m)) for name, m in (("est", est), ("lca", lca))}
    per_req["full"] = per_imp["full"] * 60  # no reuse possible
    out = {"shape": {**size, "n_N": est.n_tokens, "L_u": 300, "K_c": K_C},
           "gflops_per_impression": {k: v / 1e9 for k, v in per_imp.items()},
           "gflops_per_request_of_60": {k: v / 1e9 for k, v in per_req.items()},
           "est_over_full_per_impression": per_imp["est"] / per_imp["full"],
           "est_over_full_per_request_of_60": per_req["est"] / per_req["full"],
           "lca_over_full_per_impression": per_imp["lca"] / per_imp["full"]}
    print(json.dumps(out))
    return {"paper_shape_flops": out}


def main(argv=None):
    sparse_benchmark_main(argv, __file__, "est_vs_full_attention", pair, "variant", ["est"], None,
                          "benchmarks/results/est.json", make_batch=make_batch, scoring=scoring,
                          extra=paper_shape_flops)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
