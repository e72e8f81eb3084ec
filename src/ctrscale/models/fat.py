"""FAT, the Field-Aware Transformer (seed: FAT-field-aware-transformer.txt; design: shared/spec/fat.md).

Tokens: one per field (fields.FieldTokens: categorical lookups, numeric quantile buckets, the behavior sequence
DIN-pooled into one token), plus a learned bias per field: h_i = e_i + b_f(i) (zero-initialised).

Field-decomposed attention, per head: q_i = h_i W_Q^(f(i)), k_j = h_j W_K^(f(j)), v_j = h_j W_V^(f(j)),
s_ij = alpha_(f(i), f(j)) * q_i . k_j / sqrt(d_head), a = softmax_j(s), out_i = sum_j a_ij v_j; heads are
concatenated, then a shared output projection. alpha: one scalar per ordered field pair (shared by the heads,
or per head), initialised at 1 + N(0, 0.01).

Where the per-field matrices W^(f) come from (`projections`):
- "hyper": a basis-composed hypernetwork. Per layer and kind (Q, K, V), M shared bases B_m (d x d); each field
  has a meta-embedding phi_f (shared by the layers); a router MLP maps phi_f to M logits, the top K are kept and
  softmax-normalised: W^(f) = sum_kept w_m B_m. `freeze_generated()` computes them once and caches them, so a
  serving model pays nothing for the hypernetwork.
- "full": each field its own stored matrices (no hypernetwork).
- "shared": one W_Q / W_K / W_V for all fields: a standard transformer (with alpha = 1, no field bias).
- "pair": the naive field-pair projections W^(f(i), f(j)) of the paper's Eq. 3 (F^2 matrices per kind: toy
  scale only; `projection_parameters` gives the count at any scale).

Blocks are pre-norm (Z += Attn(LN(Z)); Z += FFN(LN(Z)), FFN = Linear-GELU-Linear); the head mean-pools the final
(layer-normed) tokens into a linear layer or a small MLP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import ConfigError, check_heads, checked
from .config import ModelConfig
from .attention import merge_heads, split_heads
from .base import CTRModel
from .fields import FieldTokens
from .layers import MLP
from .registry import register

PROJECTIONS = ("hyper", "full", "shared", "pair")
ALPHAS = ("shared", "per_head", "none")


@dataclass
class FATConfig(ModelConfig):
    embed_dim: int = checked(16, ge=1)
    dim: int = checked(64, ge=1)                # token width d
    numeric_buckets: int = checked(16, ge=2)
    layers: int = checked(2, ge=1)
    heads: int = checked(4, ge=1)
    ffn_mult: int = checked(2, ge=1)
    field_bias: bool = True
    alpha: str = checked("shared", choices=ALPHAS)       # shared by heads | per_head | none (all ones, not learned)
    projections: str = checked("hyper", choices=PROJECTIONS)  # hyper | full | shared | pair (the module docstring)
    bases: int = checked(16, ge=1)              # M, per layer and projection kind
    meta_dim: int = checked(32, ge=1)           # k_meta, the field meta-embedding size
    top_k: int = checked(3, ge=1)               # bases kept per field
    router_hidden: int = checked(64, ge=1)
    head_hidden: tuple[int, ...] = checked((), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)

    def __post_init__(self):
        super().__post_init__()
        check_heads(self.dim, self.heads)
        if not 1 <= self.top_k <= self.bases:
            raise ConfigError(f"top_k: must be in [1, bases={self.bases}], got {self.top_k}")

    def inactive(self) -> dict[str, str]:
        hyper = ("bases", "meta_dim", "top_k", "router_hidden")
        return {} if self.projections == "hyper" else dict.fromkeys(hyper, "with projections hyper")


def route(logits: Tensor, k: int) -> Tensor:
    """(F, M) router logits -> (F, M) weights: softmax over each row's k largest logits, zeros elsewhere."""
    top, idx = logits.topk(k, -1)
    return torch.zeros_like(logits).scatter(-1, idx, top.softmax(-1))


class BasisHypernetwork(nn.Module):
    """Generates the (F, d, 3d) per-field [W_Q | W_K | W_V] of one layer from shared bases."""

    def __init__(self, dim: int, bases: int, meta_dim: int, top_k: int, router_hidden: int):
        super().__init__()
        self.top_k = top_k
        self.bases = nn.Parameter(torch.randn(3, bases, dim, dim) / math.sqrt(dim))    # (kind, M, d, d)
        self.routers = nn.ModuleList(MLP(meta_dim, (router_hidden,), bases) for _ in range(3))

    def routing(self, meta: Tensor) -> Tensor:
        """(F, k_meta) meta-embeddings -> (3, F, M) sparse basis weights."""
        return torch.stack([route(r(meta), self.top_k) for r in self.routers])

    def forward(self, meta: Tensor) -> Tensor:
        w = self.routing(meta)                                                           # (3, F, M)
        generated = torch.einsum("kfm,kmde->kfde", w, self.bases)                        # (3, F, d, d)
        return generated.permute(1, 2, 0, 3).flatten(-2)                                 # (F, d, 3d)


class FieldProjections(nn.Module):
    """h (B, F, d) -> q, k, v. Per-field modes give (B, F, d) each; "pair" gives (B, F_q, F_k, d) each."""

    def __init__(self, n_fields: int, cfg: FATConfig):
        super().__init__()
        self.mode, d = cfg.projections, cfg.dim
        if self.mode == "shared":
            self.weight = nn.Parameter(torch.randn(d, 3 * d) / math.sqrt(d))
        elif self.mode == "full":
            self.weight = nn.Parameter(torch.randn(n_fields, d, 3 * d) / math.sqrt(d))
        elif self.mode == "pair":
            self.weight = nn.Parameter(torch.randn(n_fields, n_fields, d, 3 * d) / math.sqrt(d))
        else:
            self.hyper = BasisHypernetwork(d, cfg.bases, cfg.meta_dim, cfg.top_k, cfg.router_hidden)
        self.register_buffer("cached", None, persistent=False)

    def per_field(self, meta: Tensor) -> Tensor:
        """(F, d, 3d): the matrices in use (hyper: the cache once frozen, else freshly generated)."""
        if self.mode == "hyper":
            return self.cached if self.cached is not None else self.hyper(meta)
        return self.weight

    def freeze(self, meta: Tensor) -> None:
        if self.mode == "hyper":
            with torch.no_grad():
                self.cached = self.hyper(meta)

    def forward(self, h: Tensor, meta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.mode == "shared":
            return (h @ self.weight).chunk(3, -1)
        if self.mode == "pair":
            wq, wkv = self.weight.split([h.shape[-1], 2 * h.shape[-1]], -1)
            q = torch.einsum("bid,ijde->bije", h, wq)                                  # from token i's state
            return (q, *torch.einsum("bjd,ijde->bije", h, wkv).chunk(2, -1))           # k, v from token j's
        return torch.einsum("bfd,fde->bfe", h, self.per_field(meta)).chunk(3, -1)


class FieldAttention(nn.Module):
    def __init__(self, n_fields: int, cfg: FATConfig):
        super().__init__()
        self.heads = cfg.heads
        self.proj = FieldProjections(n_fields, cfg)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        alpha_heads = cfg.heads if cfg.alpha == "per_head" else 1
        alpha = 1 + 0.01 * torch.randn(alpha_heads, n_fields, n_fields)
        if cfg.alpha == "none":
            self.register_buffer("alpha", torch.ones(1, n_fields, n_fields))
        else:
            self.alpha = nn.Parameter(alpha)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, H, F, F) pre-softmax scores, alpha applied."""
        dh = q.shape[-1] // self.heads
        if q.dim() == 4:                                                   # pair: (B, F, F, d)
            qk = split_heads(q * k, self.heads, dim=-2).sum(-1).permute(0, 3, 1, 2)
        else:
            qk = split_heads(q, self.heads) @ split_heads(k, self.heads).transpose(-1, -2)
        return self.alpha * qk / math.sqrt(dh)

    def forward(self, h: Tensor, meta: Tensor) -> Tensor:
        q, k, v = self.proj(h, meta)
        p = self.scores(q, k).softmax(-1)                                 # (B, H, F, F)
        if v.dim() == 4:                                                   # pair: v (B, F_q, F_k, d)
            out = merge_heads(torch.einsum("bhij,bijhe->bihe", p, split_heads(v, self.heads, dim=-2)), dim=-2)
        else:
            out = merge_heads(p @ split_heads(v, self.heads))
        return self.out(out)


class FATBlock(nn.Module):
    def __init__(self, n_fields: int, cfg: FATConfig):
        super().__init__()
        self.norm_att, self.norm_ffn = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.att = FieldAttention(n_fields, cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim), nn.GELU(),
                                 nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim))

    def forward(self, z: Tensor, meta: Tensor) -> Tensor:
        z = z + self.att(self.norm_att(z), meta)
        return z + self.ffn(self.norm_ffn(z))


@register("fat", FATConfig, "FAT: field-aware transformer (per-field projections from a hypernetwork, alpha)")
class FAT(CTRModel):
    def __init__(self, spec: DataSpec, cfg: FATConfig):
        super().__init__()
        self.cfg = cfg
        self.tokens = FieldTokens(spec, cfg.embed_dim, cfg.dim, cfg.numeric_buckets)
        n = self.tokens.n_tokens
        self.field_bias = nn.Parameter(torch.zeros(n, cfg.dim)) if cfg.field_bias else None
        self.meta = nn.Parameter(torch.randn(n, cfg.meta_dim)) if cfg.projections == "hyper" else None
        self.blocks = nn.ModuleList(FATBlock(n, cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = MLP(cfg.dim, cfg.head_hidden, 1, cfg.dropout)

    @property
    def field_names(self) -> list[str]:
        return self.tokens.names

    def score_pointwise(self, batch: Batch) -> Tensor:
        z = self.tokens(batch)                                       # (B, F, d)
        if self.field_bias is not None:
            z = z + self.field_bias
        for block in self.blocks:
            z = block(z, self.meta)
        return self.head(self.norm(z).mean(1)).squeeze(-1)

    def freeze_generated(self) -> "FAT":
        """Cache every layer's generated per-field matrices: later forwards skip the hypernetwork (serving).
        Training again after this would not update the cache: call it once training is over."""
        for block in self.blocks:
            block.att.proj.freeze(self.meta)
        return self

    def for_serving(self) -> "FAT":
        return self.freeze_generated()

    def alphas(self) -> Tensor:
        """(layers, F, F) field-pair modulation, mean over heads; row = query field, column = key field."""
        return torch.stack([b.att.alpha.detach().mean(0) for b in self.blocks])


@dataclass
class TransformerConfig(FATConfig):
    field_bias: bool = False
    alpha: str = checked("none", choices=ALPHAS)
    projections: str = checked("shared", choices=PROJECTIONS)


@register("transformer", TransformerConfig, "Plain transformer over field tokens (FAT with field awareness off)")
class FieldTransformer(FAT):
    pass


def projection_parameters(projections: str, fields: int, dim: int, layers: int, bases: int = 16,
                          meta_dim: int = 32, router_hidden: int = 64) -> int:
    """Parameters that produce the Q/K/V projections of all layers (what the projection modes differ in)."""
    d = dim
    per_layer = {"shared": 3 * d * d, "full": fields * 3 * d * d, "pair": fields * fields * 3 * d * d,
                 "hyper": 3 * bases * d * d + 3 * (meta_dim * router_hidden + router_hidden
                                                   + router_hidden * bases + bases)}[projections]
    return layers * per_layer + (fields * meta_dim if projections == "hyper" else 0)
