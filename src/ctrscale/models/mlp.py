"""Embedding + MLP ("DeepCTR" baseline).

inputs="plain": all field embeddings and the mean of the history (fields.plain_inputs), then an MLP.
inputs="pooled": the EST paper's MLP base model (its Table 3): the hierarchical baselines' unified inputs
(tokens.py: one token per non-behavioral field, the SimTier token, R_u and R_c each pooled by DIN) flattened,
then the MLP. Only this variant reads the content table and candidate-specific behaviors.
inputs="fields": the FAT paper's DeepCTR: its field tokens (fields.py, the history DIN-pooled into one token)
flattened, then the MLP.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..batch import Batch, DataSpec
from ..typed import checked
from .fields import INPUTS, TokenInputConfig, TokenInputModel
from .layers import ACTIVATIONS, MLP
from .registry import register


@dataclass
class MLPConfig(TokenInputConfig):
    inputs: str = checked("plain", choices=("plain", *INPUTS))  # plain (embeddings + mean history) | pooled |
                                                                # fields (token inputs, flattened)
    hidden: tuple[int, ...] = checked((200, 80), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)
    activation: str = checked("relu", choices=tuple(ACTIVATIONS))


@register("mlp", MLPConfig, "Embedding + MLP over all fields and the mean-pooled history (or over token inputs)")
class EmbeddingMLP(TokenInputModel):
    def __init__(self, spec: DataSpec, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.head = MLP(self.build_flat_inputs(spec, cfg), cfg.hidden, 1, cfg.dropout, cfg.activation)

    def score_pointwise(self, batch: Batch) -> Tensor:
        return self.head(self.inputs(batch).flatten(1)).squeeze(-1)           # (B, width) -> (B,)
