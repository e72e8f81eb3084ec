"""DCN-V2 (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network"), a baseline of the EST paper's Table 3.

Inputs: the FAT paper's field tokens (inputs="fields", fields.py), or by default as the EST paper feeds its
hierarchical baselines (tokens.py): one token per non-behavioral field, the
SimTier token, and R_u and R_c each pooled by DIN into one token; x0 = their concatenation. inputs="plain" feeds
FuxiCTR's DCNv2 inputs instead: every field's embedding and the mean of the history (fields.plain_inputs).

Cross layer: x_{l+1} = x0 * (W_l x_l + b_l) + x_l, W_l full-rank (rank = 0) or low-rank W_l = U_l V_l^T. The
cross network sits beside a deep MLP on x0 with both outputs concatenated ("parallel"), or feeds the deep MLP
("stacked"); a head MLP gives the logit (the paper's final layer is linear: head_hidden=() reproduces it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import checked
from .fields import INPUTS, TokenInputConfig, TokenInputModel
from .layers import ACTIVATIONS, MLP
from .registry import register

STRUCTURES = ("parallel", "stacked")


@dataclass
class DCNv2Config(TokenInputConfig):
    inputs: str = checked("pooled", choices=("plain", *INPUTS))  # pooled | fields | plain (FuxiCTR's)
    cross_layers: int = checked(3, ge=0)
    rank: int = checked(0, ge=0)  # 0: full-rank W; r > 0: W = U V^T with U, V of shape (D, r)
    structure: str = checked("parallel", choices=STRUCTURES)  # parallel (cross beside deep, concatenated) |
                                                              # stacked (deep on the cross output)
    deep_hidden: tuple[int, ...] = checked((256, 128), ge=1)
    head_hidden: tuple[int, ...] = checked((256, 64), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)
    activation: str = checked("relu", choices=tuple(ACTIVATIONS))  # the deep and head MLPs'


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (W x_l + b) + x_l on (B, D) vectors; W full (D, D) or the low-rank product U V^T."""

    def __init__(self, width: int, rank: int = 0):
        super().__init__()
        if rank:
            self.v = nn.Linear(width, rank, bias=False)   # V^T: project down
            self.w = nn.Linear(rank, width)               # U and the bias b
        else:
            self.v, self.w = None, nn.Linear(width, width)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        wx = self.w(self.v(x)) if self.v is not None else self.w(x)
        return x0 * wx + x


@register("dcnv2", DCNv2Config,
          "DCN-V2: cross network (full or low-rank) and deep MLP over DIN-pooled tokens or plain inputs")
class DCNv2(TokenInputModel):
    def __init__(self, spec: DataSpec, cfg: DCNv2Config):
        super().__init__()
        self.cfg = cfg
        width = self.build_flat_inputs(spec, cfg)
        self.cross = nn.ModuleList(CrossLayer(width, cfg.rank) for _ in range(cfg.cross_layers))
        self.deep = MLP(width, cfg.deep_hidden, None, cfg.dropout, cfg.activation)
        deep_out = cfg.deep_hidden[-1] if cfg.deep_hidden else width
        head_in = width + deep_out if cfg.structure == "parallel" else deep_out
        self.head = MLP(head_in, cfg.head_hidden, 1, cfg.dropout, cfg.activation)

    def score_pointwise(self, batch: Batch) -> Tensor:
        x0 = self.inputs(batch).flatten(1)                          # (B, width)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.cfg.structure == "parallel":
            x = torch.cat([x, self.deep(x0)], -1)
        else:
            x = self.deep(x)
        return self.head(x).squeeze(-1)
