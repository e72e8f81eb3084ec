"""DeepFM (Guo et al. 2017, "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction"), a baseline
of the FAT paper.

logit = FM(x) + DNN(x) over shared field embeddings: FM = w_0 + sum_i w(x_i) + sum_{i<j} <e_i, e_j> (computed as
((sum e)^2 - sum e^2) / 2), DNN = an MLP over the concatenated embeddings. The embeddings are the field tokens
(fields.py; the behavior sequence enters as one DIN-pooled token) or the EST paper's pooled tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..batch import Batch, DataSpec
from ..typed import checked
from .ffm import LinearTerm
from .fields import TokenInputConfig, TokenInputModel
from .layers import MLP
from .registry import register


@dataclass
class DeepFMConfig(TokenInputConfig):
    inputs: str = "fields"
    dim: int = checked(16, ge=1)  # the shared embedding width
    hidden: tuple[int, ...] = checked((256, 128), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)


@register("deepfm", DeepFMConfig, "DeepFM: factorization machine and MLP over shared field embeddings")
class DeepFM(TokenInputModel):
    def __init__(self, spec: DataSpec, cfg: DeepFMConfig):
        super().__init__()
        self.cfg = cfg
        n = self.build_inputs(spec, cfg)
        self.linear = LinearTerm(spec)
        self.deep = MLP(n * cfg.dim, cfg.hidden, 1, cfg.dropout)

    def score_pointwise(self, batch: Batch) -> Tensor:
        e = self.inputs(batch)                                                      # (B, T, d)
        fm = 0.5 * (e.sum(1).square() - e.square().sum(1)).sum(-1)
        return self.linear(batch) + fm + self.deep(e.flatten(1)).squeeze(-1)
