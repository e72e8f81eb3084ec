"""DIN (Zhou et al., 2018): target attention of the candidate over the history, padding masked."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import Batch, DataSpec
from ..typed import checked
from .config import ModelConfig
from .base import CTRModel
from .attention import TargetAttention
from .layers import ACTIVATIONS, MLP
from .tables import FeatureEmbedding
from .registry import register


@dataclass
class DINConfig(ModelConfig):
    embed_dim: int = checked(16, ge=1)
    hidden: tuple[int, ...] = checked((200, 80), ge=1)
    attention_hidden: tuple[int, ...] = checked((80, 40), ge=1)
    attention_softmax: bool = False  # the paper leaves weights unnormalised
    dropout: float = checked(0.0, ge=0, lt=1)
    activation: str = checked("relu", choices=tuple(ACTIVATIONS))            # the head MLP's (the paper: dice)
    attention_activation: str = checked("relu", choices=tuple(ACTIVATIONS))  # the attention MLP's


@register("din", DINConfig, "DIN: candidate-to-history target attention")
class DIN(CTRModel):
    def __init__(self, spec: DataSpec, cfg: DINConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = FeatureEmbedding(spec, cfg.embed_dim)
        d_hist = len(spec.hist) * cfg.embed_dim
        self.attention = TargetAttention(d_hist, cfg.attention_hidden, cfg.attention_softmax,
                                         cfg.attention_activation)
        self.head = MLP(self.emb.out_flat + d_hist, cfg.hidden, 1, cfg.dropout, cfg.activation)

    def score_pointwise(self, batch: Batch) -> Tensor:
        keys = self.emb.hist(batch.hist).flatten(-2)                       # (B, L, D)
        query = self.emb.candidate_as_behavior(batch.sparse).flatten(-2)   # (B, D)
        interest = self.attention(query, keys, batch.hist_mask)            # (B, D)
        x = torch.cat([self.emb.flat(batch.sparse, batch.dense), interest], -1)
        return self.head(x).squeeze(-1)
