"""OneTrans (Zhang et al., 2025) and the EST paper's two enhanced variants, as a unified-modeling baseline.

One transformer over [S ; NS]: sequential tokens S (the behaviors) first, non-sequential tokens NS (one per
non-behavioral field, plus SimTier) after them, under causal attention, so NS tokens read every behavior and the
behaviors never read the candidate. Mixed parameterisation: all S tokens share one set of Q/K/V, output and FFN
weights; every NS token has its own. The candidate-specific behaviors R_c enter as
- `candidate_sequence: pool`: mean-pooled into one NS token (OneTrans as published, like MTGR),
- `din`: pooled into one NS token by DIN's target attention (OneTrans-D),
- `full`: every R_c token appended to S after R_u (OneTrans-F: the full unified sequence).
Head: [flatten(NS), mean of the valid S] -> MLP, as EST's (the EST paper treats all its baselines so).
Pre-norm RMSNorm, SwiGLU FFNs. Not built: the pyramid stacking (dropping S queries in upper layers) and the
cross-request KV cache; request scoring re-encodes the history per candidate (CTRModel's default).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import check_heads, checked
from .attention import TargetAttention, attention_function, merge_heads, split_heads
from .layers import MLP, RMSNorm, SwiGLU, TokenLinear, TokenSwiGLU, masked_mean
from .registry import register
from .tokens import UnifiedInputConfig, UnifiedInputModel, UnifiedInputs

MODES = ("pool", "din", "full")


@dataclass
class OneTransConfig(UnifiedInputConfig):
    layers: int = checked(2, ge=1)
    heads: int = checked(4, ge=1)
    ffn_mult: int = checked(2, ge=1)
    candidate_sequence: str = checked("pool", choices=MODES)  # pool (OneTrans) | din (OneTrans-D) | full (OneTrans-F)
    attention_hidden: tuple[int, ...] = checked((64, 32), ge=1)  # DIN pooling (candidate_sequence: din)
    head_hidden: tuple[int, ...] = checked((256, 64), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)

    def __post_init__(self):
        super().__post_init__()
        check_heads(self.dim, self.heads)

    def inactive(self) -> dict[str, str]:
        return {} if self.candidate_sequence == "din" else {"attention_hidden": "with candidate_sequence din"}


class MixedLayer(nn.Module):
    """Causal self-attention + FFN over [S ; NS] with shared S weights and token-specific NS weights."""

    def __init__(self, n_ns: int, cfg: OneTransConfig):
        super().__init__()
        d, self.heads = cfg.dim, cfg.heads
        self.norm_s, self.norm_ns = RMSNorm(d), RMSNorm(d)
        self.qkv_s, self.qkv_ns = nn.Linear(d, 3 * d, bias=False), TokenLinear(n_ns, d, 3 * d, bias=False)
        self.o_s, self.o_ns = nn.Linear(d, d, bias=False), TokenLinear(n_ns, d, d, bias=False)
        self.ffn_norm_s, self.ffn_norm_ns = RMSNorm(d), RMSNorm(d)
        self.ffn_s, self.ffn_ns = SwiGLU(d, cfg.ffn_mult), TokenSwiGLU(n_ns, d, cfg.ffn_mult)

    def forward(self, s: Tensor, ns: Tensor, mask_s: Tensor) -> tuple[Tensor, Tensor]:
        # s (B, L, d), ns (B, n, d), mask_s (B, L)
        b, length, n = s.shape[0], s.shape[1], ns.shape[1]
        qkv = torch.cat([self.qkv_s(self.norm_s(s)), self.qkv_ns(self.norm_ns(ns))], 1)        # (B, T, 3d)
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, -1))                         # (B, H, T, e)
        pos = torch.arange(length + n, device=s.device)
        key_ok = torch.cat([mask_s, mask_s.new_ones(b, n)], 1)                                   # (B, T)
        allowed = (pos[:, None] >= pos[None, :]) & key_ok[:, None, None, :]                      # causal + padding
        out = merge_heads(attention_function("dense")(q, k, v, allowed))                         # (B, T, d)
        s, ns = s + self.o_s(out[:, :length]), ns + self.o_ns(out[:, length:])
        return s + self.ffn_s(self.ffn_norm_s(s)), ns + self.ffn_ns(self.ffn_norm_ns(ns))


@register("onetrans", OneTransConfig, "OneTrans: one causal transformer over [behaviors ; feature tokens], mixed "
                                      "parameters; candidate_sequence pool / din / full = OneTrans / -D / -F")
class OneTrans(UnifiedInputModel):
    def __init__(self, spec: DataSpec, cfg: OneTransConfig):
        super().__init__()
        self.cfg = cfg
        self.inputs = UnifiedInputs(spec, cfg.embed_dim, cfg.dim, cfg.simtier_bins)
        self.pool = TargetAttention(cfg.dim, cfg.attention_hidden) if cfg.candidate_sequence == "din" else None
        n_ns = self.inputs.n_tokens + (0 if cfg.candidate_sequence == "full" else 1)
        self.layers = nn.ModuleList(MixedLayer(n_ns, cfg) for _ in range(cfg.layers))
        self.head = MLP(n_ns * cfg.dim + cfg.dim, cfg.head_hidden, 1, cfg.dropout)

    def score_pointwise(self, batch: Batch) -> Tensor:
        ns, s_u, s_c = self.inputs.of_batch(batch)
        mask_u, mask_c = batch.hist_mask, batch.cand_hist_mask
        if self.cfg.candidate_sequence == "full":
            s, mask_s = torch.cat([s_u, s_c], 1), torch.cat([mask_u, mask_c], 1)
        else:
            if self.pool is not None:
                pooled = self.pool(self.inputs.candidate_queries(batch.sparse)[1], s_c, mask_c)     # (B, d)
            else:
                pooled = masked_mean(s_c, mask_c, 1)
            s, mask_s, ns = s_u, mask_u, torch.cat([ns, pooled.unsqueeze(1)], 1)
        for layer in self.layers:
            s, ns = layer(s, ns, mask_s)
        return self.head(torch.cat([ns.flatten(1), masked_mean(s, mask_s, 1)], -1)).squeeze(-1)
