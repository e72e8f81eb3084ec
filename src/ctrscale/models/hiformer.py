"""HiFormer (Gui et al. 2023, "Hiformer: Heterogeneous Feature Interactions Learning with Transformers for
Recommender Systems"), a baseline of the EST paper's Table 3.

Inputs: the FAT paper's field tokens (inputs="fields", fields.py), or by default as the EST paper feeds its
hierarchical baselines (tokens.py): one token per non-behavioral field, the
SimTier token, and R_u and R_c each pooled by DIN into one token.

The heterogeneous attention layer: every token has its own W_Q, W_K, W_V (all heads) and its own output
projection W_O, so the attention score of a token pair is read in the two tokens' own semantic spaces; then a
per-token FFN (SwiGLU, each token its own weights). Pre-norm with RMSNorm and residuals around both; a final
RMSNorm, then the flattened tokens go to the head MLP. (The paper's "Hiformer" variant with composite low-rank
query/key projections over all tokens is not built here: the EST paper names the heterogeneous attention layer.)
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import check_heads, checked
from .attention import attention_function, merge_heads, split_heads
from .fields import TokenInputConfig, TokenInputModel
from .layers import MLP, RMSNorm, TokenLinear, TokenSwiGLU
from .registry import register


@dataclass
class HiFormerConfig(TokenInputConfig):
    layers: int = checked(2, ge=1)
    heads: int = checked(4, ge=1)
    ffn_mult: int = checked(2, ge=1)            # per-token SwiGLU hidden width = ffn_mult * dim
    head_hidden: tuple[int, ...] = checked((256, 64), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)

    def __post_init__(self):
        super().__post_init__()
        check_heads(self.dim, self.heads)


class HeterogeneousAttention(nn.Module):
    """(B, T, d) -> (B, T, d): multi-head attention over the T tokens with token-specific Q/K/V and output maps."""

    def __init__(self, n_tokens: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = TokenLinear(n_tokens, dim, 3 * dim, bias=False)  # token i: [W_Q^i | W_K^i | W_V^i]
        self.o = TokenLinear(n_tokens, dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, -1))   # (B, H, T, d / H)
        return self.o(merge_heads(attention_function("dense")(q, k, v)))         # (B, T, d)


class HiFormerLayer(nn.Module):
    def __init__(self, n_tokens: int, cfg: HiFormerConfig):
        super().__init__()
        self.norm_att, self.norm_ffn = RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.att = HeterogeneousAttention(n_tokens, cfg.dim, cfg.heads)
        self.ffn = TokenSwiGLU(n_tokens, cfg.dim, cfg.ffn_mult)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.att(self.norm_att(x))
        return x + self.ffn(self.norm_ffn(x))


@register("hiformer", HiFormerConfig, "HiFormer: heterogeneous (token-specific) attention over DIN-pooled tokens")
class HiFormer(TokenInputModel):
    def __init__(self, spec: DataSpec, cfg: HiFormerConfig):
        super().__init__()
        self.cfg = cfg
        n = self.build_inputs(spec, cfg)
        self.layers = nn.ModuleList(HiFormerLayer(n, cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim)
        self.head = MLP(n * cfg.dim, cfg.head_hidden, 1, cfg.dropout)

    def score_pointwise(self, batch: Batch) -> Tensor:
        x = self.inputs(batch)                                      # (B, T, d)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).flatten(1)).squeeze(-1)
