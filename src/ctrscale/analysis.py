"""Where the attention of a unified model carries information (EST paper, section 4.1).

A Full-Attention EST model attends over [N ; S]; its attention map splits into four blocks by query and key kind:
N->N, N->S, S->N, S->S. For each layer and block we measure the effective rank of the attention matrix, per head
and sample (padding rows and columns zeroed, which leaves the singular values of the real part), as
- the stable rank ||A||_F^2 / ||A||_2^2 (Rudelson and Vershynin), and
- the entropy rank exp(H(p)), p = singular values / their sum (Roy and Vetterli),
averaged over heads and samples. Then the AUC/GAUC of the trained model when each block is masked at inference
(its logits set to -inf; a query row left with no key attends to nothing). The paper found N->S the richest
block and the only one whose masking costs accuracy; the heatmap and the table show what our data says.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .data.loader import Loader, LoaderConfig
from .errors import ConfigError
from .models.est import BLOCKS
from .reports import markdown_table, pyplot, save_figure
from .train.inference import evaluate, load_trained


def _ranks(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a (M, q, k) -> stable rank and entropy rank of each matrix (NaN for an all-zero matrix)."""
    s = torch.linalg.svdvals(a.double())
    stable = s.square().sum(-1) / s[..., 0].square()
    p = s / s.sum(-1, keepdim=True)
    erank = torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum(-1))
    empty = s[..., 0] <= 1e-12
    return stable.masked_fill(empty, float("nan")), erank.masked_fill(empty, float("nan"))


@torch.no_grad()
def block_ranks(model, batches) -> dict:
    """{layer: {block: {"stable": mean, "erank": mean}}} over the given batches."""
    n = model.n_tokens
    sums: dict = {}
    model.attention_log = []
    try:
        for batch in batches:
            model.attention_log.clear()
            model(batch)
            query_ok = torch.cat([torch.ones(len(batch), n, dtype=torch.bool, device=batch.hist.device),
                                  batch.hist_mask, batch.cand_hist_mask], 1)                # (B, T)
            for layer, p in enumerate(model.attention_log):                                  # (B, H, T, T)
                p = p * query_ok[:, None, :, None]
                parts = {"N->N": p[..., :n, :n], "N->S": p[..., :n, n:], "S->N": p[..., n:, :n], "S->S": p[..., n:, n:]}
                for block, a in parts.items():
                    stable, erank = _ranks(a.flatten(0, 1))
                    acc = sums.setdefault(layer, {}).setdefault(block, [0.0, 0.0, 0])
                    ok = ~torch.isnan(stable)
                    acc[0] += float(stable[ok].sum())
                    acc[1] += float(erank[ok].sum())
                    acc[2] += int(ok.sum())
    finally:
        model.attention_log = None
    return {layer: {b: {"stable": v[0] / max(v[2], 1), "erank": v[1] / max(v[2], 1)} for b, v in blocks.items()}
            for layer, blocks in sums.items()}


def masking_table(model, data, split: str, max_len: int, batch_size: int, device) -> list[dict]:
    """AUC/GAUC with nothing masked, then with each block masked in every layer."""
    rows = []
    try:
        for block in (None, *BLOCKS):
            model.masked_blocks = frozenset([block]) if block else frozenset()
            m = evaluate(model, data, split, max_len, batch_size, device)
            rows.append({"masked": block or "none", "auc": m["auc"], "gauc": m.get("gauc")})
    finally:
        model.masked_blocks = frozenset()
    base = rows[0]
    for r in rows:
        r["auc_rel"] = r["auc"] / base["auc"] - 1
        r["gauc_rel"] = r["gauc"] / base["gauc"] - 1 if base.get("gauc") else None
    return rows


def plot_ranks(ranks: dict, path: Path) -> None:
    layers = sorted(ranks)
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 1.2 + 0.6 * len(layers)), constrained_layout=True)
    for ax, kind, title in zip(axes, ("stable", "erank"), ("stable rank", "entropy rank")):
        grid = [[ranks[layer][b][kind] for b in BLOCKS] for layer in layers]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(BLOCKS)), BLOCKS)
        ax.set_yticks(range(len(layers)), [f"layer {layer + 1}" for layer in layers])
        for i, row in enumerate(grid):
            for j, v in enumerate(row):  # dark text on the bright upper half of viridis, white below
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="k" if im.norm(v) > 0.6 else "w")
        ax.set_title(f"attention {title} per block")
        fig.colorbar(im, ax=ax, shrink=0.8)
    save_figure(fig, path, tight=False)  # constrained_layout already placed the panels


def analyze_attention(run: str | Path, split: str = "test", samples: int = 1000, out: Path | None = None) -> dict:
    cfg, data, model, device = load_trained(run)
    if cfg.model.name != "est" or cfg.model.config.attention != "full":
        raise ConfigError(f"{run}: the attention analysis needs an `est` model trained with model.attention=full "
                         f"(this run: {cfg.model.to_dict()})")
    out = out or Path(run) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    max_len = cfg.data.max_len or data.spec.max_len
    loader = Loader(data, split, LoaderConfig(batch_size=min(samples, 250), max_len=max_len, shuffle=True,
                                              cand_seq=model.needs.cand_seq), seed=0)
    batches = (b.to(device) for _, b in zip(range(-(-samples // loader.cfg.batch_size)), loader.epoch(0)))
    ranks = block_ranks(model, batches)
    masking = masking_table(model, data, split, max_len, cfg.data.eval_batch_size, device)
    plot_ranks(ranks, out / "block_rank.png")
    masked = markdown_table([[r["masked"], f"{r['auc']:.4f}", f"{r['gauc']:.4f}", f"{100 * r['auc_rel']:+.2f}%",
                              f"{100 * r['gauc_rel']:+.2f}%"] for r in masking],
                            ["masked block", "AUC", "GAUC", "AUC vs none", "GAUC vs none"])
    by_layer = markdown_table([[str(layer + 1)] + [f"{ranks[layer][b]['stable']:.2f} / {ranks[layer][b]['erank']:.2f}"
                                                   for b in BLOCKS] for layer in sorted(ranks)],
                              ["layer"] + [f"{b} stable / erank" for b in BLOCKS])
    table = f"{masked}\n\n{by_layer}"
    (out / "attention.md").write_text(table + "\n")
    (out / "attention.json").write_text(json.dumps({"split": split, "samples": samples, "ranks": ranks,
                                                    "masking": masking}, indent=1))
    return {"table": table, "heatmap": str(out / "block_rank.png"), "ranks": ranks, "masking": masking}
