"""Plot a sparse-vs-full benchmark JSON (bench_suan.py, bench_sparsectr.py, bench_est.py): time and peak-memory
ratios against history length, one line per configuration, the counted-FLOPs ratio dashed beside the time ratio.

    python benchmarks/plot_ratios.py benchmarks/results/suan.json benchmarks/results/sparsectr.json
writes suan.png and sparsectr.png next to them."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = json.loads(path.read_text())
    rows = res["sparse_vs_full"]
    length = "n" if "n" in rows[0] else "L"  # older result files name it L
    series = next(k for k in ("preset", "variant", "r") if k in rows[0])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    for i, key in enumerate(sorted({r[series] for r in rows}, key=str)):
        pts = sorted((r for r in rows if r[series] == key), key=lambda r: r[length])
        x = [r[length] for r in pts]
        color = f"C{i}"
        label = f"{series} = {key}" if series == "r" else str(key)
        for ax, mode in zip(axes[:2], ("train", "infer")):
            ax.plot(x, [r[mode]["time_ratio"] for r in pts], "o-", color=color, label=f"{label} time")
            ax.plot(x, [r["flops_ratio"] for r in pts], "--", color=color, alpha=0.6, label=f"{label} FLOPs")
        axes[2].plot(x, [r["train"]["memory_ratio"] for r in pts], "o-", color=color, label=f"{label} train")
        axes[2].plot(x, [r["infer"]["memory_ratio"] for r in pts], "s:", color=color, label=f"{label} infer")
    titles = ("forward + backward: time ratio (solid) vs FLOPs ratio (dashed)", "inference: time vs FLOPs ratio",
              "peak memory ratio")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("history length")
        ax.set_ylabel("sparse / full")
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{res['benchmark']} ({res['machine']['cpus']} CPUs, torch {res['machine']['torch']})", fontsize=10)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(plot(Path(p)))
