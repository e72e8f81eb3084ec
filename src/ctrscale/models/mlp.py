"""Embedding + MLP ("DeepCTR" baseline).

inputs="plain": all field embeddings and the mean of the history, then an MLP.
inputs="pooled": the EST paper's MLP base model (its Table 3): the hierarchical baselines' unified inputs
(tokens.py: one token per non-behavioral field, the SimTier token, R_u and R_c each pooled by DIN) flattened,
then the MLP. Only this variant reads the content table and candidate-specific behaviors.
inputs="fields": the FAT paper's DeepCTR: its field tokens (fields.py, the history DIN-pooled into one token)
flattened, then the MLP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import Batch, DataSpec
from ..typed import checked
from .fields import INPUTS, TokenInputConfig, TokenInputModel
from .layers import ACTIVATIONS, MLP, masked_mean
from .tables import FeatureEmbedding
from .registry import register


@dataclass
class MLPConfig(TokenInputConfig):
    inputs: str = checked("plain", choices=("plain", *INPUTS))  # plain (embeddings + mean history) | pooled |
                                                                # fields (token inputs, flattened)
    hidden: tuple[int, ...] = checked((200, 80), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)
    activation: str = checked("relu", choices=tuple(ACTIVATIONS))

    def inactive(self) -> dict[str, str]:
        return {**super().inactive(), "dim": "with token inputs (pooled or fields)"} if self.inputs == "plain" \
            else super().inactive()


@register("mlp", MLPConfig, "Embedding + MLP over all fields and the mean-pooled history (or over token inputs)")
class EmbeddingMLP(TokenInputModel):
    def __init__(self, spec: DataSpec, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.plain = cfg.inputs == "plain"
        if self.plain:
            self.emb = FeatureEmbedding(spec, cfg.embed_dim)
            d_in = self.emb.out_flat + len(spec.hist) * cfg.embed_dim
        else:
            d_in = self.build_inputs(spec, cfg) * cfg.dim
        self.head = MLP(d_in, cfg.hidden, 1, cfg.dropout, cfg.activation)

    def score_pointwise(self, batch: Batch) -> Tensor:
        if not self.plain:
            return self.head(self.inputs(batch).flatten(1)).squeeze(-1)       # (B, T * d) -> (B,)
        hist = self.emb.hist(batch.hist).flatten(-2)               # (B, L, F_hist * d)
        pooled = masked_mean(hist, batch.hist_mask, dim=1)         # (B, F_hist * d)
        x = torch.cat([self.emb.flat(batch.sparse, batch.dense), pooled], -1)
        return self.head(x).squeeze(-1)

