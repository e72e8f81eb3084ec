"""RankMixer (Zhu et al. 2025, ByteDance, "RankMixer: Scaling Up Ranking Models in Industrial Recommenders"), a
baseline of the EST paper's Table 3.

Inputs: the FAT paper's field tokens (inputs="fields", fields.py), or by default as the EST paper feeds its
hierarchical baselines (tokens.py): T tokens of width d, one per
non-behavioral field, the SimTier token, and R_u and R_c each pooled by DIN into one token.

One block (post-norm, as the paper): S = LN(TokenMixing(X) + X), X' = LN(PFFN(S) + S); the head reads the mean
of the final tokens.
- TokenMixing is parameter-free: each token splits into H slices of width d / H, and the mixed sequence is
  slice 1 of every token, then slice 2 of every token, ..., re-cut into T tokens of width d (a fixed permutation
  of the T * d values, so the token count is kept without a linear map). With H = T, the paper's choice, mixed
  token h is exactly the concatenation of slice h of all T tokens; H = T needs d divisible by T, so heads = 0
  picks the largest divisor of d not above T (T itself when it divides d).
- PFFN: each token its own two-layer GELU feed-forward network (hidden ffn_mult * d), as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import ConfigError, checked
from .fields import TokenInputConfig, TokenInputModel
from .layers import MLP, TokenLinear
from .registry import register


@dataclass
class RankMixerConfig(TokenInputConfig):
    layers: int = checked(2, ge=1)
    heads: int = checked(0, ge=0)   # mixing heads H; 0: the largest divisor of dim <= T (the paper's H = T if it
                                    # divides)
    ffn_mult: int = checked(4, ge=1)  # per-token FFN hidden width = ffn_mult * dim (the paper: k = 4)
    head_hidden: tuple[int, ...] = checked((256, 64), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)

    def __post_init__(self):
        super().__post_init__()
        if self.heads < 0 or (self.heads and self.dim % self.heads):
            raise ConfigError(f"heads: must be 0 (auto) or a divisor of dim ({self.dim}), got {self.heads}")


def mixing_heads(n_tokens: int, dim: int, heads: int) -> int:
    return heads or max(h for h in range(1, min(n_tokens, dim) + 1) if dim % h == 0)


def token_mixing(x: Tensor, heads: int) -> Tensor:
    """(..., T, d) -> (..., T, d): split every token into `heads` slices, gather slice h of all tokens in token
    order, heads in order, and re-cut the result into T tokens of width d."""
    *lead, t, d = x.shape
    x = x.reshape(*lead, t, heads, d // heads).transpose(-3, -2)            # (..., H, T, d / H)
    return x.reshape(*lead, t, d)


class PerTokenFFN(nn.Module):
    """Token t: W2_t GELU(W1_t s_t + b1_t) + b2_t, every token its own weights."""

    def __init__(self, n: int, dim: int, mult: int):
        super().__init__()
        self.w1 = TokenLinear(n, dim, mult * dim)
        self.w2 = TokenLinear(n, mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(nn.functional.gelu(self.w1(x)))


class RankMixerBlock(nn.Module):
    def __init__(self, n_tokens: int, dim: int, heads: int, ffn_mult: int):
        super().__init__()
        self.heads = heads
        self.norm_mix, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = PerTokenFFN(n_tokens, dim, ffn_mult)

    def forward(self, x: Tensor) -> Tensor:
        s = self.norm_mix(token_mixing(x, self.heads) + x)
        return self.norm_ffn(self.ffn(s) + s)


@register("rankmixer", RankMixerConfig, "RankMixer: token mixing + per-token FFNs over DIN-pooled tokens")
class RankMixer(TokenInputModel):
    def __init__(self, spec: DataSpec, cfg: RankMixerConfig):
        super().__init__()
        self.cfg = cfg
        n = self.build_inputs(spec, cfg)
        self.heads = mixing_heads(n, cfg.dim, cfg.heads)
        self.blocks = nn.ModuleList(RankMixerBlock(n, cfg.dim, self.heads, cfg.ffn_mult) for _ in range(cfg.layers))
        self.head = MLP(cfg.dim, cfg.head_hidden, 1, cfg.dropout)

    def score_pointwise(self, batch: Batch) -> Tensor:
        x = self.inputs(batch)                                      # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1)).squeeze(-1)
