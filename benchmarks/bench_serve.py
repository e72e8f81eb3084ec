"""Latency under load (issue 26): `ctrscale serve` on 127.0.0.1 driven by a bounded open-loop load generator.

For each model (DIN, SUAN, LightSUAN, SparseCTR S2, EST, FAT; bundles of ml1m-u2999-ctr-v1 runs with max_len 1000
and random weights: latency does not depend on the weights' values), one server process (one uvicorn worker,
scoring on one thread with torch's intra-op threads) per cache mode:
  miss   the server runs with --cache-mib 0: every request encodes its user
  hit    a small pool of users, each already seen: every request reuses the cached user state
Requests are real test-split users of ml1m-u2999 with >= 1000 behaviors, cut to the last H in {100, 1000}, with
N in {100, 1000} candidates drawn from the item catalogue, sent as JSON bodies prepared beforehand.

Open loop: request i is sent at t0 + i / rate whether or not earlier ones returned (so queueing shows in the
tail); latency runs from the scheduled send to the last byte of the response; a bounded count and duration,
warm-up requests excluded. At the headline setting (N 1000, H 1000, miss) the rate rises until the server
saturates (achieved < 90% of offered). Beside: the same request scored in-process by the Scorer (the HTTP and
parsing share of p50) and its candidates scored in-process as independent impressions (no user-side reuse).

The load generator shares the machine's cores with the server: on 2 cores its own work shows in the tail.
Each model is served eager and, where it exports (`ctrscale export --compile`), compiled.

    python benchmarks/bench_serve.py [--models din suan ...] [--quick] [--out benchmarks/results/serve.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from ctrscale.batch import Batch  # noqa: E402
from ctrscale.data import catalog  # noqa: E402
from ctrscale.data.dataset import PreparedDataset  # noqa: E402
from ctrscale.reports import markdown_table, pyplot, save_figure  # noqa: E402
from ctrscale.serving import BundleError, Scorer, export_bundle  # noqa: E402
from ctrscale.serving.app import keep_freed_memory  # noqa: E402
from ctrscale.serving.replay import RawDecoder, random_run  # noqa: E402

MODELS = {"din": ("din", []), "suan": ("suan", []), "lightsuan": ("lightsuan", []),
          "sparsectr-S2": ("sparsectr", ["model.sparsity=S2"]), "est": ("est", []), "fat": ("fat", [])}
TARGET_P99_MS = {"lightsuan": 30, "sparsectr-S2": 30, "suan": 50, "est": 100}


# ----------------------------------------------------------------------------------------------------------------
# requests


def request_pool(data: PreparedDataset, seed: int = 0):
    """Test requests of users with >= 1000 behaviors (raw values) and the item catalogue to draw candidates from."""
    sp = data.split("test")
    lens = sp.column("hist_end") - sp.column("hist_start")
    req_keys = sp.column("request")
    rows = np.flatnonzero(lens >= 1000)
    _, first = np.unique(req_keys[rows], return_index=True)
    dec = RawDecoder(data)
    base = [r for r, _ in dec.requests("test", rows[np.sort(first)][:64])]
    tr = data.split("train")
    items = {}
    cols = tr.take(np.arange(len(tr)))
    spec = data.spec
    for j, f in enumerate(spec.sparse):
        if spec.roles[f] == "item":
            items[f] = dec.ids(f, cols["sparse"][:, j])
    _, uniq = np.unique(np.asarray(items["item_id"]), return_index=True)
    catalogue = {f: [v[i] for i in uniq] for f, v in items.items()}
    return base, catalogue


def make_body(base: dict, catalogue: dict, n: int, h: int, rng) -> dict:
    pick = rng.choice(len(catalogue["item_id"]), n, replace=n > len(catalogue["item_id"]))
    return {**base, "history": {k: v[-h:] for k, v in base["history"].items()},
            "candidates": {f: [vals[i] for i in pick] for f, vals in catalogue.items()}}


# ----------------------------------------------------------------------------------------------------------------
# the server and the open-loop client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle: Path, *args: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "ctrscale.cli", "serve", str(bundle), "--port",
                                      str(self.port), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                status, _ = asyncio.run(send(self.port, b"", "GET", "/readyz"))
                if status == 200:
                    return
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server not ready in 180 s")
            time.sleep(0.3)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def send(port: int, body: bytes, method: str = "POST", path: str = "/v1/score") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    writer.write(head + body)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    payload = await reader.readexactly(length) if length else await reader.read()
    writer.close()
    return int(status_line.split()[1]), payload


async def open_loop(port: int, bodies: list[bytes], rate: float, count: int, duration: float, warmup: int,
                    timeout: float = 60.0) -> dict:
    """Send warm-up requests one by one, then `count` requests (at most `duration` s of schedule) at `rate`."""
    for b in bodies[:warmup]:
        await send(port, b)
    n = min(count, max(1, int(rate * duration)))
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    lat, statuses, server = [None] * n, [None] * n, []

    async def one(i: int):
        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
        scheduled = t0 + i / rate
        try:
            status, payload = await asyncio.wait_for(send(port, bodies[(warmup + i) % len(bodies)]), timeout)
        except (asyncio.TimeoutError, OSError):
            statuses[i] = "timeout"
            return
        lat[i], statuses[i] = loop.time() - scheduled, status
        if status == 200:
            out = json.loads(payload)
            server.append({**out["timing_ms"], "cache": out["cache"]})
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = loop.time() - t0
    done = np.array([x for x in lat if x is not None]) * 1e3
    pct = lambda q: round(float(np.percentile(done, q)), 2) if len(done) else None  # noqa: E731
    parts = {k: round(statistics.median(s[k] for s in server), 3) for k in ("parse", "features", "user",
                                                                           "candidates", "total")} if server else {}
    caches = sorted({s["cache"] for s in server})
    return {"offered_rps": rate, "requests": n, "ok": sum(s == 200 for s in statuses),
            "failed": sum(s != 200 for s in statuses), "achieved_rps": round(len(done) / elapsed, 2),
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "server_median_ms": parts, "cache": caches}


# ----------------------------------------------------------------------------------------------------------------
# in-process references


def in_process(scorer: Scorer, body: bytes, repeats: int, independent: bool = True) -> dict:
    """Median ms of parse + Scorer.score for one body (the cache off), and of its candidates as independent
    impressions (the user re-encoded per candidate; measured on up to 100 candidates, scaled linearly)."""
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        scorer.score(json.loads(body), use_cache=False)
        times.append(time.perf_counter() - t)
    out = {"scorer_ms": round(statistics.median(times[1:]) * 1e3, 2)}
    if not independent:
        return out
    enc = scorer.encoder.encode(json.loads(body))
    n = enc.num_candidates
    k = min(n, 100)
    ctx = enc.context
    own = lambda x: x.expand(k, *x.shape[1:]).contiguous()  # noqa: E731
    flat = Batch(sparse=enc.cand_sparse[0, :k], dense=enc.cand_dense[0, :k], hist=own(ctx.hist),
                 hist_time=own(ctx.hist_time), time=own(ctx.time), label=torch.zeros(k), user=own(ctx.user),
                 request=own(ctx.request),
                 cand_hist=None if enc.cand_hist is None else enc.cand_hist[0, :k],
                 cand_hist_time=None if enc.cand_hist_time is None else enc.cand_hist_time[0, :k])
    with torch.inference_mode():
        t = time.perf_counter()
        scorer.model(flat)
        pointwise = (time.perf_counter() - t) * n / k
    return {**out, "independent_impressions_ms": round(pointwise * 1e3, 1), "independent_measured_on": k}


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", default="benchmarks/results/serve.json")
    ap.add_argument("--work", default="runs/bench-serve", help="where the runs and bundles are written")
    ap.add_argument("--rates", nargs="+", type=float, default=[5, 10, 20, 40])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of schedule per point")
    ap.add_argument("--count", type=int, default=100, help="requests per point (at most)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 s per point, one rate")
    ap.add_argument("--report", action="store_true", help="only rewrite the table and plot from --out's JSON")
    ap.add_argument("--in-process", action="store_true", help="only measure the in-process references again, "
                    "for the bundles of an earlier run, into --out's JSON")
    args = ap.parse_args(argv)
    if args.report:
        return write_all(json.loads(Path(args.out).read_text()), args.out)
    keep_freed_memory()  # as `ctrscale serve` does: the in-process references run under the same allocator
    if args.quick:
        args.rates, args.duration, args.count = [10], 2.0, 20
    data = PreparedDataset(catalog.prepare("ml1m-u2999-ctr-v1")[0])
    base, catalogue = request_pool(data)
    work = Path(args.work)
    if args.in_process:
        return in_process_again(json.loads(Path(args.out).read_text()), work, base, catalogue, args.out)
    results = {"setup": {"data": "ml1m-u2999-ctr-v1", "max_len": 1000, "weights": "random (latency only)",
                         "server": "ctrscale serve, 1 uvicorn worker, scoring on 1 thread, torch threads "
                                   f"{torch.get_num_threads()}", "client": "asyncio open loop, same machine",
                         "duration_s": args.duration, "count": args.count, "warmup": 5},
               "models": {}}
    rng = np.random.default_rng(0)
    for label in args.models:
        name, overrides = MODELS[label]
        run = random_run(work / "runs", data, name, "data.max_len=1000", f"name={label}", *overrides)
        res = {"points": [], "in_process": {}}
        try:
            t = time.perf_counter()
            bundle = export_bundle(run, work / "bundles" / label, compile=True, overwrite=True)
            res["compile"] = {"seconds": round(time.perf_counter() - t, 1),
                              **json.loads((bundle / "manifest.json").read_text())["compiled"]}
            forms = ("eager", "compiled")
        except BundleError as e:  # the model does not export: eager only, and say why
            bundle = export_bundle(run, work / "bundles" / label, overwrite=True)
            res["compile"] = {"error": str(e)}
            forms = ("eager",)
        bodies = {(n, h): [json.dumps(make_body(base[i % len(base)], catalogue, n, h, rng)).encode()
                           for i in range(40)] for n in (100, 1000) for h in (100, 1000)}
        res["in_process"] = in_process_all(bundle, forms, bodies)
        for form in forms:
            for mode in ("miss", "hit"):
                server = Server(bundle, *(["--cache-mib", "0"] if mode == "miss" else []),
                                *(["--compiled"] if form == "compiled" else []))
                try:
                    for (n, h), bs in bodies.items():
                        pool = bs if mode == "miss" else bs[:4]  # hit: four users, each seen in the warm-up
                        rates = args.rates if (n, h, mode) == (1000, 1000, "miss") else [10]
                        for rate in rates:
                            point = asyncio.run(open_loop(server.port, pool, rate, args.count, args.duration,
                                                          warmup=5 if mode == "miss" else len(pool)))
                            point.update(candidates=n, history=h, cache_mode=mode, form=form)
                            res["points"].append(point)
                            print(f"{label:13s} {form:8s} {mode:4s} N{n:<5d} H{h:<5d} {rate:5.0f}/s -> p50 "
                                  f"{point['p50_ms']} p99 {point['p99_ms']} ms, {point['achieved_rps']}/s, ok "
                                  f"{point['ok']}/{point['requests']} {point['server_median_ms']}", flush=True)
                            if point["achieved_rps"] < 0.9 * rate or point["failed"]:
                                break  # saturated: higher rates only grow the queue
                finally:
                    server.stop()
        results["models"][label] = res
        write_all(results, args.out)
    write_all(results, args.out)


def in_process_all(bundle: Path, forms, bodies: dict) -> dict:
    out = {}
    for form in forms:
        scorer = Scorer(bundle, compiled=form == "compiled")
        for (n, h), bs in bodies.items():
            out[f"{form}-N{n}-H{h}"] = in_process(scorer, bs[0], 3 if n * h < 10**6 else 2,
                                                  independent=form == "eager")
    return out


def in_process_again(results: dict, work: Path, base, catalogue, out: str) -> None:
    rng = np.random.default_rng(0)
    for label, res in results["models"].items():
        forms = ("eager",) if "error" in res.get("compile", {}) else ("eager", "compiled")
        bodies = {(n, h): [json.dumps(make_body(base[i % len(base)], catalogue, n, h, rng)).encode()
                           for i in range(40)] for n in (100, 1000) for h in (100, 1000)}
        res["in_process"] = in_process_all(work / "bundles" / label, forms, bodies)
        print(label, res["in_process"], flush=True)
    write_all(results, out)


def headline(res: dict, n=1000, h=1000, mode="miss", rate=10, form="eager") -> dict | None:
    """The point at `rate`, else (the server saturated below it) the highest rate measured."""
    pts = [p for p in res["points"] if (p["candidates"], p["history"], p["cache_mode"], p["form"]) ==
           (n, h, mode, form) and p["offered_rps"] <= rate]
    return max(pts, key=lambda p: p["offered_rps"]) if pts else None


def write_all(results: dict, out: str) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**results, "machine": machine()}, indent=1))
    rows = []
    for (label, res), form in [(x, f) for x in results["models"].items() for f in ("eager", "compiled")]:
        miss, hit = headline(res, form=form), headline(res, mode="hit", form=form)
        if miss is None:
            continue
        ip = res["in_process"][f"{form}-N1000-H1000"]
        independent = res["in_process"]["eager-N1000-H1000"]["independent_impressions_ms"]
        target = TARGET_P99_MS.get(label)
        work_ms = sum(v for k, v in miss["server_median_ms"].items() if k in ("features", "user", "candidates"))
        http_share = 1 - work_ms / miss["p50_ms"] if miss["offered_rps"] == 10 else None  # saturated: queueing
        at = "" if miss["offered_rps"] == 10 else f" (saturated: {miss['achieved_rps']}/s at {miss['offered_rps']:g}/s)"
        rows.append([label + at, form, f"{miss['p50_ms']:.1f}", f"{miss['p95_ms']:.1f}", f"{miss['p99_ms']:.1f}",
                     f"<= {target}" + (" ok" if miss["p99_ms"] <= target else " MISSED") if target else "-",
                     f"{hit['p50_ms']:.1f} / {hit['p99_ms']:.1f}" if hit else "-",
                     f"{hit['p50_ms'] / miss['p50_ms']:.2f}" if hit else "-",
                     f"{ip['scorer_ms']:.1f}", f"{100 * http_share:.0f}%" if http_share is not None else "-",
                     f"{independent:,.0f}",
                     " / ".join(f"{k} {v}" for k, v in miss["server_median_ms"].items() if k != "total")])
    table = markdown_table(rows, ["model", "form", "p50 ms", "p95 ms", "p99 ms", "p99 target", "hit p50 / p99",
                                  "hit/miss p50", "in-process ms", "HTTP, parsing, waiting: share of p50",
                                  "independent impressions ms", "server median ms (miss)"])
    detail = markdown_table([[str(x) for x in (label, p["form"], p["cache_mode"], p["candidates"], p["history"],
                                                p["offered_rps"], p["achieved_rps"], p["p50_ms"], p["p95_ms"],
                                                p["p99_ms"], f"{p['ok']}/{p['requests']}")]
                             for label, res in results["models"].items() for p in res["points"]],
                            ["model", "form", "cache", "N", "H", "offered/s", "achieved/s", "p50", "p95", "p99", "ok"])
    md = out.with_suffix(".md")
    md.write_text(f"# Serving latency ({results['setup']['data']}, max_len 1000)\n\n"
                  f"Setup: {json.dumps(results['setup'])}\n\nMachine: {json.dumps(machine())}\n\n"
                  f"## 1000 candidates, history 1000, 10 requests/s\n\n{table}\n\n## Export with --compile\n\n"
                  + "\n".join(f"- {label}: {json.dumps(res.get('compile'))}"
                              for label, res in results["models"].items())
                  + f"\n\n## Every point\n\n{detail}\n")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, q in zip(axes, ("p50_ms", "p95_ms", "p99_ms")):
        for color, (label, res) in enumerate(results["models"].items()):
            for form, style in (("eager", "-"), ("compiled", "--")):
                pts = sorted((p["offered_rps"], p[q]) for p in res["points"] if p["form"] == form and
                             (p["candidates"], p["history"], p["cache_mode"]) == (1000, 1000, "miss"))
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=f"C{color}", label=f"{label} ({form})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered requests/s (open loop)")
        ax.set_title(f"{q[:3]} latency")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    fig.suptitle("ctrscale serve: 1000 candidates, history 1000, cache miss (eager solid, compiled dashed)")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    save_figure(fig, out.with_name(out.stem + "_latency_vs_rate.png"))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
