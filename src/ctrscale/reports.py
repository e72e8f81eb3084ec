"""Markdown tables and matplotlib figures for every report ctrscale writes (demo, compare, analyses, scaling fits,
preparation reports): one table format, one way to draw off-screen and save, one self-contained HTML page."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def markdown_table(rows: list[list[str]], columns: list[str]) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline); cells are already formatted."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot drawing off-screen (Agg): reports are written by jobs without a display. Imported on first
    use, so modules that report stay cheap to import."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path, tight: bool = True) -> None:
    """Write `fig` as a PNG (120 dpi) and free it (figures kept open pile up over a sweep)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def plot_epoch_curves(curves: dict[str, list[dict]], path: Path, metrics: tuple[str, ...] = ("auc",)) -> None:
    """One panel per validation metric against epoch, one line per label; `curves` maps a label to its
    `{"epoch": e, "valid_<metric>": x}` rows (a run's `epochs`, or a mean over seeds). When no label has two epochs
    (a one-epoch comparison) there is no curve to draw: bars of the final values instead."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    if all(len(rows) < 2 for rows in curves.values()):
        _final_epoch_bars(fig, axes[0], curves, metrics)
        save_figure(fig, path)
        return
    for ax, metric in zip(axes[0], metrics):
        for i, (label, rows) in enumerate(curves.items()):  # the colour cycle has 10: later lines change style
            ax.plot([r["epoch"] for r in rows], [r[f"valid_{metric}"] for r in rows], label=label,
                    marker="os^"[i // 10 % 3], linestyle=("-", "--", ":")[i // 10 % 3])
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {metric.upper()}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Validation {' / '.join(m.upper() for m in metrics)} per epoch")
    save_figure(fig, path)


def _final_epoch_bars(fig, axes, curves: dict[str, list[dict]], metrics: tuple[str, ...]) -> None:
    """One bar per label with its value written on it; the y-range is zoomed to the values (AUCs that differ in
    the third decimal would be bars of equal height from 0)."""
    labels = [label for label, rows in curves.items() if rows]
    many = len(labels) > 6  # the demo's whole registry: values written upright, names slanted
    for ax, metric in zip(axes, metrics):
        values = [curves[label][-1][f"valid_{metric}"] for label in labels]
        bars = ax.bar(range(len(labels)), values, color=[f"C{i % 10}" for i in range(len(labels))])
        ax.bar_label(bars, fmt="%.4f", fontsize=7, rotation=90 if many else 0, padding=2)
        lo, hi = min(values), max(values)
        pad = max(hi - lo, 0.002)  # equal values still get a visible range
        ax.set_ylim(lo - pad / 2, hi + pad * (1.2 if many else 0.5))  # room above for the written values
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=45 if len(labels) > 4 else 0,
                      ha="right" if len(labels) > 4 else "center")
        ax.set_ylabel(f"validation {metric.upper()}")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Validation {' / '.join(m.upper() for m in metrics)} at the final epoch (one epoch: no curve)")


def plot_tradeoff(points: dict[str, tuple[float, float, int]], path: Path) -> None:
    """Test AUC against inference MFLOPs per impression (log axis), one labelled point per model, its area growing
    with dense parameters; the frontier (no model more accurate for less) is joined by a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    labels = list(points)
    flops = np.array([points[k][0] for k in labels])
    auc = np.array([points[k][1] for k in labels])
    dense = np.array([points[k][2] for k in labels], float)
    ax.scatter(flops, auc, s=30 + 170 * np.sqrt(dense / dense.max()), c=[f"C{i % 10}" for i in range(len(labels))],
               alpha=0.8, edgecolors="k", linewidths=0.5, zorder=3)
    for k, x, y in zip(labels, flops, auc):
        ax.annotate(k, (x, y), textcoords="offset points", xytext=(7, 4), fontsize=8)
    order = np.lexsort((-auc, flops))
    front = [i for j, i in enumerate(order) if auc[i] > max(auc[order[:j]], default=-np.inf)]
    ax.plot(flops[front], auc[front], "--", color="0.4", lw=1, zorder=2, label="frontier: best AUC for its cost")
    ax.set_xscale("log")
    ax.set_xlim(flops.min() / 1.5, flops.max() * 2.5)  # room on the right for the last point's label
    ax.set_xlabel("inference MFLOPs per impression (counted)")
    ax.set_ylabel("test AUC")
    ax.set_title("Accuracy against cost (point area: dense parameters)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def write_html(markdown_text: str, folder: Path, path: Path, title: str) -> None:
    """A self-contained HTML page of a Markdown report: its PNG images (paths relative to `folder`) are embedded
    as data URIs, so the one file opens anywhere, mailed or copied alone."""
    import base64
    import html
    import re

    import markdown
    body = markdown.markdown(markdown_text, extensions=["tables"])

    def embed(m: re.Match) -> str:
        png = folder / html.unescape(m.group(2))
        if not png.is_file():
            return m.group(0)
        return f'{m.group(1)}"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"'
    body = re.sub(r'(<img[^>]*?src=)"([^"]+\.png)"', embed, body)
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222;
      line-height: 1.45}}
table {{border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0}}
th, td {{border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right}}
th:first-child, td:first-child {{text-align: left}}
th {{background: #f3f3f3}}
img {{max-width: 100%; margin: 0.5rem 0}}
code {{background: #f3f3f3; padding: 0 0.2rem}}
</style></head>
<body>
{body}
</body></html>
""")
