"""Embedding + MLP ("DeepCTR" baseline): all field embeddings and the mean of the history, then an MLP."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import Batch
from ..data.dataset import DataSpec
from .base import CTRModel
from .layers import MLP, FeatureEmbedding, masked_mean
from .registry import register


@dataclass
class MLPConfig:
    embed_dim: int = 16
    hidden: tuple[int, ...] = (200, 80)
    dropout: float = 0.0


@register("mlp", MLPConfig, "Embedding + MLP over all fields and the mean-pooled history")
class EmbeddingMLP(CTRModel):
    def __init__(self, spec: DataSpec, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = FeatureEmbedding(spec, cfg.embed_dim)
        d_hist = len(spec.hist) * cfg.embed_dim
        self.head = MLP(self.emb.out_flat + d_hist, cfg.hidden, 1, cfg.dropout)

    def forward(self, batch: Batch) -> Tensor:
        hist = self.emb.hist(batch.hist).flatten(-2)               # (B, L, F_hist * d)
        pooled = masked_mean(hist, batch.hist_mask, dim=1)         # (B, F_hist * d)
        x = torch.cat([self.emb.flat(batch.sparse, batch.dense), pooled], -1)
        return self.head(x).squeeze(-1)
