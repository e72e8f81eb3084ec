"""FFM (Juan et al. 2016, "Field-aware Factorization Machines for CTR Prediction"), a baseline of the FAT paper.

logit = w_0 + sum_i w(x_i) + sum_{i<j} <v_(i, f(j)), v_(j, f(i))>: each feature keeps one latent vector of width k
per field it may meet, and a pair of fields interacts through the vectors each keeps for the other (the
field-pair prior FAT generalises). Fields: every categorical one (its value's vectors), every numeric one (value x
times its vectors, plus a bias: FeatureEmbedding's affine map) and the behavior sequence as one multi-valued field
(the mean of its behaviors' vectors, each behavior the mean of its fields', as libffm weights a bag of features).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import checked
from .config import ModelConfig
from .base import CTRModel
from .layers import masked_mean
from .tables import FeatureEmbedding
from .registry import register


@dataclass
class FFMConfig(ModelConfig):
    latent_dim: int = checked(4, ge=1)  # k, per (feature, field) pair


class FieldValues(nn.Module):
    """(B, T, width): per field, its feature's embedding of `width`; the sequence as the mean of its behaviors."""

    def __init__(self, spec: DataSpec, width: int):
        super().__init__()
        self.emb = FeatureEmbedding(spec, width)
        self.has_hist = bool(spec.hist)
        self.n_fields = len(spec.sparse) + len(spec.dense) + int(self.has_hist)

    def forward(self, batch: Batch) -> Tensor:
        parts = [self.emb.sparse(batch.sparse), self.emb.numeric(batch.dense)]
        if self.has_hist:
            behaviors = self.emb.hist(batch.hist).mean(-2)                          # (B, L, width)
            parts.append(masked_mean(behaviors, batch.hist_mask, 1).unsqueeze(1))
        return torch.cat(parts, 1)


class LinearTerm(nn.Module):
    """w_0 + sum_i w(x_i) over the fields (the first-order part of FM, FFM and DeepFM): (B,) logits."""

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.weights = FieldValues(spec, 1)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch) -> Tensor:
        return self.weights(batch).sum((1, 2)) + self.bias


@register("ffm", FFMConfig, "FFM: field-aware factorization machine (per field-pair latent vectors)")
class FFM(CTRModel):
    def __init__(self, spec: DataSpec, cfg: FFMConfig):
        super().__init__()
        self.cfg = cfg
        self.linear = LinearTerm(spec)
        n = len(spec.sparse) + len(spec.dense) + int(bool(spec.hist))
        self.latent = FieldValues(spec, n * cfg.latent_dim)
        self.register_buffer("upper", torch.ones(n, n).triu(1).bool(), persistent=False)

    def score_pointwise(self, batch: Batch) -> Tensor:
        v = self.latent(batch)                                                      # (B, T, T * k)
        v = v.unflatten(-1, (v.shape[1], self.cfg.latent_dim))                      # v[:, i, j]: i's vector for j
        pair = (v * v.transpose(1, 2)).sum(-1)                                      # (B, T, T): <v_ij, v_ji>
        return self.linear(batch) + pair[:, self.upper].sum(-1)
