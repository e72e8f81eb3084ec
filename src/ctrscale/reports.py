"""Markdown tables and matplotlib figures for every report ctrscale writes (demo, compare, analyses, scaling fits,
preparation reports): one table format, one way to draw off-screen and save."""
from __future__ import annotations

from pathlib import Path


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
    `{"epoch": e, "valid_<metric>": x}` rows (a run's `epochs`, or a mean over seeds)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
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

