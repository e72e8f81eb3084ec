"""Training throughput (spec/benchmarks.md #3).

Default: impressions/s of every registered model at its default size, on ml100k-ctr-v1 and the synthetic default,
and the achieved FLOP/s as a fraction of the fp32 matmul peak measured in the same run. Each model: warm-up steps,
then timed steps over real batches.

    python benchmarks/bench_train.py --out benchmarks/results/train.json

--peer (issue 29): against FuxiCTR. Impressions/s of FuxiCTR's DNN, DCNv2, DIN and BST set-ups in ctrscale on
ml1m-u2999-ctr-v1 with FuxiCTR's features (src/ctrscale/configs/fuxictr-features.yaml), at batch 256 and 1024, on
2 threads: the loader and the optimizer step included, as a training epoch runs them (shuffled batches, each cut
to its longest history). Beside each: the counted training FLOPs per impression, the achieved FLOP/s as a
share of the fp32 matmul peak measured in the same run, and the same model under torch.compile (inductor) for
training (compile time apart, the same batches) and for inference, with the speed-ups and how far the compiled
results are from eager ones (max |logit| difference; the loss after the timed steps).

Peer figures (FuxiCTR 2.3.10, batch 256, 2 cores, this machine kind; measured by the issue's author):
DNN 19.6K, DCNv2 17.6K, DIN 7.5K, BST 4.5K impressions/s.

    python benchmarks/bench_train.py --peer [--steps 60] [--no-compile] [--out results/peer/train_throughput.json]
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from common import benchmark_datasets, matmul_peak_flops, write

from ctrscale.accounting import training_flops_per_impression
from ctrscale.data import catalog
from ctrscale.data.dataset import PreparedDataset
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model, entries
from ctrscale.reports import markdown_table
from ctrscale.train.config import OptimSection, load_config
from ctrscale.train.optim import make_optimizer


def train_throughput(data, name: str, batch_size: int, steps: int, max_len: int) -> dict:
    torch.manual_seed(0)
    model = build_model(data.spec, {"name": name})
    opt = make_optimizer(model, OptimSection())
    batches = list(Loader(data, "train", LoaderConfig(batch_size=batch_size, max_len=max_len)).epoch(0))
    batches = (batches * (steps // max(1, len(batches)) + 2))[:steps + 3]

    def step(b):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for b in batches[:3]:
        step(b)
    t0 = time.perf_counter()
    for b in batches[3:]:
        step(b)
    dt = time.perf_counter() - t0
    ips = steps * batch_size / dt
    flops = training_flops_per_impression(model, batches[0])
    return {"model": name, "impressions_per_s": ips, "train_flops_per_impression": flops,
            "achieved_flops_per_s": ips * flops}


TOWER = [256, 128, 64]
# FuxiCTR's model set-ups at embedding width 16 (their MovieLens configs' towers); the same entries as the README's
# peer-equal comparison
PEERS = {"DNN": {"name": "mlp", "embed_dim": 16, "hidden": TOWER},
         "DCNv2": {"name": "dcnv2", "embed_dim": 16, "inputs": "plain", "cross_layers": 3,
                   "deep_hidden": TOWER, "head_hidden": [64]},
         "DIN": {"name": "din", "embed_dim": 16, "hidden": TOWER, "attention_hidden": [64], "activation": "dice",
                 "attention_activation": "dice"},
         "BST": {"name": "bst", "embed_dim": 16, "layers": 1, "heads": 2, "head_hidden": TOWER}}
PEER_IPS = {"DNN": 19_600, "DCNv2": 17_600, "DIN": 7_500, "BST": 4_500}  # FuxiCTR 2.3.10, batch 256, 2 cores


def loss_fn(model, b):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label)


WARMUP = 10  # steps before timing: allocator growth, the loader's first page faults, compiled graphs' first runs


def timed_training(model, forward, data, batch_size: int, steps: int, max_len: int) -> tuple[float, float]:
    """Impressions/s over `steps` optimizer steps after WARMUP ones, batches straight from the loader; and the
    mean loss of the timed steps."""
    torch.manual_seed(0)
    opt = make_optimizer(model, OptimSection())
    loader = Loader(data, "train", LoaderConfig(batch_size=batch_size, max_len=max_len, shuffle=True), seed=0)
    it = iter(loader.epoch(0))
    losses, seen, t0 = [], 0, None
    for i in range(steps + WARMUP):
        if i == WARMUP:
            t0 = time.perf_counter()
        b = next(it)
        loss = forward(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= WARMUP:
            losses.append(loss.item())
            seen += len(b)
    return seen / (time.perf_counter() - t0), sum(losses) / len(losses)


def inference_ips(fn, batch, repeats: int = 10) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(batch)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(batch)
    return repeats * len(batch) / (time.perf_counter() - t0)


def peer_markdown(rows: list[dict], peak: float) -> str:
    """The --peer table: eager against FuxiCTR, then compiled with its speed-ups and its distance from eager."""
    table = []
    for r in rows:
        peer = r["peer_impressions_per_s"]
        row = [r["model"], str(r["batch_size"]), f"{r['impressions_per_s']:,.0f}", f"{peer:,}" if peer else "",
               f"{r['impressions_per_s'] / peer:.2f}x" if peer else "", f"{r['fraction_of_peak']:.1%}"]
        if "train_speedup" in r:
            row += [f"{r['compiled_impressions_per_s']:,.0f} ({r['train_speedup']:.2f}x)",
                    f"{r['loss']:.6f} / {r['compiled_loss']:.6f}", f"{r['inference_speedup']:.2f}x",
                    f"{r['compiled_max_logit_diff']:.1e}"]
        table.append(row)
    head = ["model", "batch", "ctrscale impressions/s", "FuxiCTR", "ratio", "share of peak"]
    if any("train_speedup" in r for r in rows):
        head += ["compiled training (speed-up)", "loss after the timed steps, eager / compiled",
                 "compiled inference speed-up", "max abs logit difference, compiled inference"]
    return (f"Training throughput, ml1m-u2999-ctr-v1 with FuxiCTR's features, 2 threads, loader and optimizer step "
            f"included; share of peak: counted training FLOP/s over the fp32 matmul peak measured in the same run "
            f"({peak / 1e9:.0f} GFLOP/s)\n\n{markdown_table(table, head)}\n")


def peer_main(args) -> None:
    """FuxiCTR's four set-ups against FuxiCTR's own figures (--peer)."""
    torch.set_num_threads(2)
    cfg = load_config("fuxictr-features", ["model.name=mlp", "data.name=ml1m-u2999-ctr-v1"])
    data = PreparedDataset(catalog.prepare("ml1m-u2999-ctr-v1")[0]).select_fields(cfg.data.fields,
                                                                                  cfg.data.drop_fields)
    max_len = data.spec.max_len
    peak = matmul_peak_flops()
    rows = []
    for _ in Loader(data, "train", LoaderConfig(batch_size=4096, max_len=max_len)).epoch(0):
        pass  # one pass over the training rows: every run below reads them from the page cache
    for label in args.models:
        for bs in args.batch_sizes:
            torch._dynamo.reset()  # every model compiles from a clean cache (no recompile limits carried over)
            torch.manual_seed(0)
            eager = build_model(data.spec, dict(PEERS[label])).train()
            ips, loss = timed_training(eager, lambda b: loss_fn(eager, b), data, bs, args.steps, max_len)
            sample = next(iter(Loader(data, "valid", LoaderConfig(batch_size=bs, max_len=max_len))))
            flops = training_flops_per_impression(eager, sample)
            r = {"model": label, "config": PEERS[label], "batch_size": bs, "impressions_per_s": ips, "loss": loss,
                 "train_flops_per_impression": flops, "fraction_of_peak": ips * flops / peak,
                 "peer_impressions_per_s": PEER_IPS[label] if bs == 256 else None}
            if not args.no_compile:
                torch.manual_seed(0)
                model = build_model(data.spec, dict(PEERS[label])).train()
                compiled = torch.compile(model)
                t0 = time.perf_counter()
                loss_fn(compiled, sample).backward()  # compiles forward and backward (not timed below)
                model.zero_grad(set_to_none=True)
                r["compile_seconds"] = time.perf_counter() - t0
                torch.manual_seed(0)
                model = build_model(data.spec, dict(PEERS[label])).train()
                compiled = torch.compile(model)
                r["compiled_impressions_per_s"], r["compiled_loss"] = timed_training(
                    model, lambda b: loss_fn(compiled, b), data, bs, args.steps, max_len)
                r["train_speedup"] = r["compiled_impressions_per_s"] / ips
                model.eval()
                fast = torch.compile(copy.deepcopy(model))  # its own guards, apart from the training graph
                r["inference_impressions_per_s"] = inference_ips(model, sample)
                r["compiled_inference_impressions_per_s"] = inference_ips(fast, sample)
                r["inference_speedup"] = r["compiled_inference_impressions_per_s"] / r["inference_impressions_per_s"]
                with torch.no_grad():
                    r["compiled_max_logit_diff"] = (fast(sample) - model(sample)).abs().max().item()
            rows.append(r)
            print({k: v for k, v in r.items() if k != "config"}, flush=True)
            write({"benchmark": "peer_train_throughput", "data": "ml1m-u2999-ctr-v1 (fuxictr-features)",
                   "max_len": max_len, "threads": 2, "steps": args.steps, "matmul_peak_flops_per_s": peak,
                   "results": rows}, args.out)
    md = peer_markdown(rows, peak)
    Path(args.out).with_suffix(".md").write_text(md)
    print(md)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", action="store_true", help="FuxiCTR's set-ups on ml1m-u2999-ctr-v1 (issue 29)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024], help="--peer")
    ap.add_argument("--steps", type=int, help="timed steps (default 30; --peer 60)")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--no-compile", action="store_true", help="--peer: eager only")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.peer:
        args.steps, args.out = args.steps or 60, args.out or "results/peer/train_throughput.json"
        args.models = args.models or list(PEERS)
        unknown = set(args.models) - set(PEERS)
        if unknown:
            ap.error(f"--peer models are {', '.join(PEERS)}; not {', '.join(sorted(unknown))}")
        return peer_main(args)
    args.steps, args.out = args.steps or 30, args.out or "benchmarks/results/train.json"
    peak = matmul_peak_flops()
    sets = benchmark_datasets()
    rows = []
    for dname, data in sets.items():
        for name in args.models or sorted(entries()):
            r = train_throughput(data, name, args.batch_size, args.steps, data.spec.max_len)
            r.update(dataset=dname, max_len=data.spec.max_len, fraction_of_peak=r["achieved_flops_per_s"] / peak)
            rows.append(r)
            print(r)
    write({"benchmark": "train_throughput", "matmul_peak_flops_per_s": peak, "batch_size": args.batch_size,
           "results": rows}, args.out)


if __name__ == "__main__":
    main()
