"""Embedding + MLP ("DeepCTR" baseline).

inputs="plain": all field embeddings and the mean of the history, then an MLP.
inputs="pooled": the EST paper's MLP base model (its Table 3): the hierarchical baselines' unified inputs
(tokens.py: one token per non-behavioral field, the SimTier token, R_u and R_c each pooled by DIN) flattened,
then the MLP. Only this variant reads the content table and candidate-specific behaviors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import Batch
from ..data.dataset import DataSpec
from .base import CTRModel
from .layers import MLP, FeatureEmbedding, masked_mean
from .registry import register
from .tokens import PooledInputs, UnifiedInputConfig, candidate_sequence_of

INPUTS = ("plain", "pooled")


@dataclass
class MLPConfig(UnifiedInputConfig):
    hidden: tuple[int, ...] = (200, 80)
    dropout: float = 0.0
    inputs: str = "plain"         # plain (embeddings + mean history) | pooled (the EST paper's unified inputs)
    # used only when inputs == "pooled":

    def __post_init__(self):
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {self.inputs!r}")


@register("mlp", MLPConfig, "Embedding + MLP over all fields and the mean-pooled history (or DIN-pooled tokens)")
class EmbeddingMLP(CTRModel):
    def __init__(self, spec: DataSpec, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.pooled = cfg.inputs == "pooled"
        self.uses_content = self.pooled          # the registry loads the content table only then
        self.candidate_sequence = candidate_sequence_of(cfg) if self.pooled else None
        if self.pooled:
            self.inputs = PooledInputs(spec, cfg.embed_dim, cfg.dim, cfg.simtier_bins)
            self.head = MLP(self.inputs.n_tokens * cfg.dim, cfg.hidden, 1, cfg.dropout)
        else:
            self.emb = FeatureEmbedding(spec, cfg.embed_dim)
            d_hist = len(spec.hist) * cfg.embed_dim
            self.head = MLP(self.emb.out_flat + d_hist, cfg.hidden, 1, cfg.dropout)

    def set_content(self, table: Tensor) -> None:
        self.inputs.set_content(table)

    def forward(self, batch: Batch) -> Tensor:
        if self.pooled:
            return self.head(self.inputs(batch).flatten(1)).squeeze(-1)       # (B, (n_N + 2) * d) -> (B,)
        hist = self.emb.hist(batch.hist).flatten(-2)               # (B, L, F_hist * d)
        pooled = masked_mean(hist, batch.hist_mask, dim=1)         # (B, F_hist * d)
        x = torch.cat([self.emb.flat(batch.sparse, batch.dense), pooled], -1)
        return self.head(x).squeeze(-1)
