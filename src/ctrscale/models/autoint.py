"""AutoInt (Song et al. 2019, "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
Networks"), a baseline of the EST paper's Table 3.

Inputs: the FAT paper's field tokens (inputs="fields", fields.py), or by default as the EST paper feeds its
hierarchical baselines (tokens.py): one token per non-behavioral field, the
SimTier token, and R_u and R_c each pooled by DIN into one token.

Interacting layer, as in the paper: per head h, alpha_ij = softmax_j(<W_Q^h e_i, W_K^h e_j>) (the plain inner
product, unscaled), e_i^h = sum_j alpha_ij W_V^h e_j; the heads are concatenated, a residual with its own
projection W_Res e_i is added, then ReLU. The projections are shared by all tokens. The final tokens are
flattened into a head MLP (the paper's output layer is linear: head_hidden=() reproduces it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import checked
from .attention import attention_function, merge_heads, split_heads
from .fields import TokenInputConfig, TokenInputModel
from .layers import MLP
from .registry import register


@dataclass
class AutoIntConfig(TokenInputConfig):
    layers: int = checked(2, ge=1)
    heads: int = checked(2, ge=1)
    head_dim: int = checked(32, ge=1)  # attention width per head d'; a layer outputs heads * head_dim per token
    head_hidden: tuple[int, ...] = checked((256, 64), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)


class InteractingLayer(nn.Module):
    """(B, T, d_in) -> (B, T, heads * head_dim): multi-head self-attention over the tokens + projected residual."""

    def __init__(self, d_in: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        width = heads * head_dim
        self.q = nn.Linear(d_in, width, bias=False)
        self.k = nn.Linear(d_in, width, bias=False)
        self.v = nn.Linear(d_in, width, bias=False)
        self.res = nn.Linear(d_in, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q, self.k, self.v))  # (B, H, T, d')
        out = merge_heads(attention_function("dense")(q, k, v, scale=1.0))        # (B, T, H * d'), unscaled
        return torch.relu(out + self.res(x))


@register("autoint", AutoIntConfig, "AutoInt: multi-head self-attention interacting layers over DIN-pooled tokens")
class AutoInt(TokenInputModel):
    def __init__(self, spec: DataSpec, cfg: AutoIntConfig):
        super().__init__()
        self.cfg = cfg
        n = self.build_inputs(spec, cfg)
        width = cfg.heads * cfg.head_dim
        self.layers = nn.ModuleList(InteractingLayer(cfg.dim if i == 0 else width, cfg.heads, cfg.head_dim)
                                    for i in range(cfg.layers))
        self.head = MLP(n * width, cfg.head_hidden, 1, cfg.dropout)

    def score_pointwise(self, batch: Batch) -> Tensor:
        x = self.inputs(batch)                                      # (B, T, d)
        for layer in self.layers:
            x = layer(x)                                            # (B, T, heads * head_dim)
        return self.head(x.flatten(1)).squeeze(-1)
