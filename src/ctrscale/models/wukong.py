"""Wukong (Zhang et al. 2024, Meta, "Wukong: Towards a Scaling Law for Large-Scale Recommendation"), a baseline
of the FAT paper's Table 1.

Inputs: the field tokens (fields.py) or the EST paper's pooled tokens, X_0 of shape (n, d).
A Wukong layer: X_{i+1} = LN(concat(FMB(X_i), LCB(X_i)) + residual(X_i)), where
- FMB, the factorization machine block: the optimised FM X (X^T Y) with a learned Y of shape (n, k) gives
  (n, k) pairwise dot-product features, which LN -> MLP -> reshape turn into n_F tokens of width d;
- LCB, the linear compression block: n_L tokens, each a learned linear combination of the n input tokens;
- residual: X_i itself when n_F + n_L = n, else a learned linear map over the token axis.
The final tokens are flattened into the head MLP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import checked
from .fields import TokenInputConfig, TokenInputModel
from .layers import MLP
from .registry import register


@dataclass
class WukongConfig(TokenInputConfig):
    inputs: str = "fields"
    layers: int = checked(2, ge=1)
    fmb_tokens: int = checked(0, ge=0)          # n_F; 0: the input token count n
    lcb_tokens: int = checked(0, ge=0)          # n_L; 0: n
    compressed: int = checked(8, ge=1)          # k, the optimised FM's projection width
    fmb_hidden: tuple[int, ...] = checked((256,), ge=1)
    head_hidden: tuple[int, ...] = checked((256, 64), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)


class WukongLayer(nn.Module):
    def __init__(self, n_in: int, n_fmb: int, n_lcb: int, dim: int, compressed: int, hidden: tuple[int, ...]):
        super().__init__()
        self.n_fmb, self.dim = n_fmb, dim
        self.y = nn.Parameter(torch.randn(n_in, compressed) / n_in ** 0.5)
        self.fm_norm = nn.LayerNorm(n_in * compressed)
        self.fmb = MLP(n_in * compressed, hidden, n_fmb * dim)
        self.lcb = nn.Linear(n_in, n_lcb, bias=False)
        n_out = n_fmb + n_lcb
        self.residual = nn.Linear(n_in, n_out, bias=False) if n_out != n_in else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:                                    # (B, n, d) -> (B, n_F + n_L, d)
        fm = x @ (x.transpose(1, 2) @ self.y)                                   # (B, n, k): X X^T Y
        fmb = self.fmb(self.fm_norm(fm.flatten(1))).view(x.shape[0], self.n_fmb, self.dim)
        lcb = self.lcb(x.transpose(1, 2)).transpose(1, 2)                       # (B, n_L, d)
        res = x if self.residual is None else self.residual(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(torch.cat([fmb, lcb], 1) + res)


@register("wukong", WukongConfig, "Wukong: stacked factorization-machine and linear-compression blocks")
class Wukong(TokenInputModel):
    def __init__(self, spec: DataSpec, cfg: WukongConfig):
        super().__init__()
        self.cfg = cfg
        n = self.build_inputs(spec, cfg)
        n_fmb, n_lcb = cfg.fmb_tokens or n, cfg.lcb_tokens or n
        self.layers = nn.ModuleList(
            WukongLayer(n if i == 0 else n_fmb + n_lcb, n_fmb, n_lcb, cfg.dim, cfg.compressed, cfg.fmb_hidden)
            for i in range(cfg.layers))
        n_out = n_fmb + n_lcb if cfg.layers else n
        self.head = MLP(n_out * cfg.dim, cfg.head_hidden, 1, cfg.dropout)

    def score_pointwise(self, batch: Batch) -> Tensor:
        x = self.inputs(batch)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.flatten(1)).squeeze(-1)
