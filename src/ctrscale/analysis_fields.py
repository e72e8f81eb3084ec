"""What a trained FAT learned about field pairs: its modulation alpha (FAT paper, section 5.4).

alpha_(f, g) scales the attention logits of a query token of field f on a key token of field g: above 1 it
sharpens the attention f pays to g (g's content decides more of f's update), toward 0 it flattens it. We average
over heads and layers, plot the F x F matrix (alpha.png, one panel per layer beside the mean) and list the most
asymmetric pairs (alpha_fg - alpha_gf largest in size) and the strongest and weakest off-diagonal pairs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .reports import markdown_table, pyplot, save_figure
from .train.config import load_config
from .train.inference import load_trained


def asymmetric_pairs(alpha: np.ndarray, names: list[str], top: int) -> list[dict]:
    """The `top` unordered pairs with the largest |alpha_fg - alpha_gf|, the larger direction first."""
    i, j = np.triu_indices(len(names), 1)
    diff = alpha[i, j] - alpha[j, i]
    rows = []
    for k in np.argsort(-np.abs(diff), kind="stable")[:top]:
        f, g = (i[k], j[k]) if diff[k] >= 0 else (j[k], i[k])
        rows.append({"query": names[f], "key": names[g], "alpha": float(alpha[f, g]),
                     "reverse": float(alpha[g, f]), "difference": float(abs(diff[k]))})
    return rows


def extreme_pairs(alpha: np.ndarray, names: list[str], top: int) -> tuple[list[dict], list[dict]]:
    """Ordered off-diagonal pairs with the largest and the smallest alpha."""
    f, g = np.nonzero(~np.eye(len(names), dtype=bool))
    order = np.argsort(-alpha[f, g], kind="stable")
    pick = lambda ks: [{"query": names[f[k]], "key": names[g[k]], "alpha": float(alpha[f[k], g[k]])}  # noqa: E731
                       for k in ks]
    return pick(order[:top]), pick(order[::-1][:top])


def plot_alpha(alpha: np.ndarray, names: list[str], path: Path) -> None:
    panels = [("mean over layers", alpha.mean(0))] + ([(f"layer {k + 1}", a) for k, a in enumerate(alpha)]
                                                      if len(alpha) > 1 else [])
    size = 0.45 * len(names) + 2.5
    fig, axes = pyplot().subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    reach = max(float(np.abs(alpha - 1).max()), 1e-6)  # diverging around 1: red amplifies a pair, blue damps it
    for ax, (title, a) in zip(axes[0], panels):
        im = ax.imshow(a, cmap="RdBu_r", vmin=1 - reach, vmax=1 + reach)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("key field")
        ax.set_ylabel("query field")
        ax.set_title(f"alpha, {title}")
        fig.colorbar(im, ax=ax, shrink=0.7)
    save_figure(fig, path)


def analyze_fields(run: str | Path, out: Path | None = None, top: int = 10) -> dict:
    model = load_config(Path(run) / "config.yaml").model
    if model.name != "fat" or model.config.alpha == "none":
        raise ConfigError(f"{run}: the field analysis reads a `fat` model's learned alpha (this run: "
                          f"{model.to_dict()})")
    _, _, model, _ = load_trained(run)
    with torch.no_grad():
        alpha = model.alphas().cpu().numpy()                            # (layers, F, F)
    names = model.field_names
    out = out or Path(run) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    mean = alpha.mean(0)
    asym = asymmetric_pairs(mean, names, top)
    strongest, weakest = extreme_pairs(mean, names, top)
    plot_alpha(alpha, names, out / "alpha.png")
    pairs = markdown_table([[r["query"], r["key"], f"{r['alpha']:.3f}", f"{r['reverse']:.3f}",
                             f"{r['difference']:.3f}"] for r in asym],
                           ["query field", "key field", "alpha", "reverse alpha", "difference"])
    extremes = markdown_table([[f"{s['query']} -> {s['key']}", f"{s['alpha']:.3f}", f"{w['query']} -> {w['key']}",
                                f"{w['alpha']:.3f}"] for s, w in zip(strongest, weakest)],
                              ["strongest query -> key", "alpha", "weakest query -> key", "alpha"])
    table = f"{pairs}\n\n{extremes}"
    (out / "fields.md").write_text(table + "\n")
    (out / "fields.json").write_text(json.dumps({"fields": names, "alpha": alpha.tolist(), "asymmetric": asym,
                                                 "strongest": strongest, "weakest": weakest}, indent=1))
    return {"table": table, "heatmap": str(out / "alpha.png"), "asymmetric": asym}
