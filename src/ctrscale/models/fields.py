"""Field tokens: the FAT paper's inputs, one width-d token per field.

- a categorical field: its embedding (width embed_dim);
- a numeric field: its quantile bucket's embedding (edges = train quantiles from DataSpec.dense_percentiles;
  standard-normal quantiles when the spec has none, numerics being standardised);
- the behavior sequence: one token, DIN target attention of the candidate over the behaviors;
then each token its own linear map to width d (no bias: field biases are FAT's own switch).

The hierarchical baselines (MLP, DCNv2, AutoInt, HiFormer, RankMixer) read either these tokens (inputs="fields",
the FAT paper's protocol) or the EST paper's unified tokens (inputs="pooled", tokens.PooledInputs). MLP and DCNv2
also read plain inputs (inputs="plain", plain_inputs): every field's embedding and the mean of each behavior
field's embeddings over the history, flattened, as FuxiCTR's DNN and DCNv2 feed them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from statistics import NormalDist

import torch
from torch import Tensor, nn

from ..batch import DataNeeds, Batch, DataSpec
from ..typed import checked
from .attention import TargetAttention
from .layers import TokenLinear, masked_mean
from .tables import EmbeddingTable, FeatureEmbedding
from .tokens import PooledInputs, UnifiedInputConfig, UnifiedInputModel

INPUTS = ("pooled", "fields")


def bucket_edges(spec: DataSpec, buckets: int) -> Tensor:
    """(F_dense, buckets - 1) interior quantile edges of each numeric field."""
    q = [100.0 * j / buckets for j in range(1, buckets)]
    rows = []
    for f in spec.dense:
        pct = spec.dense_percentiles.get(f)
        if pct:
            rows.append([_interp(x, pct) for x in q])
        else:
            rows.append([NormalDist().inv_cdf(x / 100.0) for x in q])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(spec.dense), buckets - 1)


def _interp(percent: float, pct: list[float]) -> float:
    lo = int(percent)
    hi = min(lo + 1, 100)
    return pct[lo] + (percent - lo) * (pct[hi] - pct[lo])


class FieldTokens(nn.Module):
    """(B, T, d) tokens, T = F_sparse + F_dense (+ 1 for the behavior sequence); `names` labels them."""

    def __init__(self, spec: DataSpec, embed_dim: int, dim: int, numeric_buckets: int = 16,
                 attention_hidden: tuple[int, ...] = (64, 32)):
        super().__init__()
        if numeric_buckets < 2:
            raise ValueError(f"numeric_buckets must be >= 2, got {numeric_buckets}")
        self.emb = FeatureEmbedding(spec, embed_dim)
        self.buckets = numeric_buckets
        self.register_buffer("edges", bucket_edges(spec, numeric_buckets))
        # bucket embeddings of all numeric fields in one table
        self.tables = nn.ModuleDict({"numeric": EmbeddingTable(len(spec.dense) * numeric_buckets, embed_dim)})
        self.register_buffer("numeric_offset", torch.arange(len(spec.dense)) * numeric_buckets, persistent=False)
        self.names = [*spec.sparse, *spec.dense]
        self.fields = TokenLinear(len(self.names), embed_dim, dim, bias=False)
        self.history = None
        if spec.hist:
            d_hist = len(spec.hist) * embed_dim
            self.history = TargetAttention(d_hist, attention_hidden)
            self.history_token = nn.Linear(d_hist, dim, bias=False)
            self.names.append("history")
        self.n_tokens = len(self.names)

    def bucket(self, dense: Tensor) -> Tensor:
        """(B, F_dense) standardised values -> (B, F_dense) bucket ids in [0, buckets)."""
        return (dense.unsqueeze(-1) > self.edges).sum(-1)

    def forward(self, batch: Batch) -> Tensor:
        parts = [self.emb.sparse(batch.sparse)]
        if self.edges.numel():
            parts.append(self.tables["numeric"](self.bucket(batch.dense) + self.numeric_offset))
        tokens = self.fields(torch.cat(parts, -2))                                  # (B, F, d)
        if self.history is None:
            return tokens
        keys = self.emb.hist(batch.hist).flatten(-2)                                 # (B, L, F_hist * e)
        query = self.emb.candidate_as_behavior(batch.sparse).flatten(-2)
        seq = self.history_token(self.history(query, keys, batch.hist_mask))          # (B, d)
        return torch.cat([tokens, seq.unsqueeze(1)], 1)


def plain_inputs(emb: FeatureEmbedding, batch: Batch) -> Tensor:
    """(B, width): every non-behavioral field's embedding (numerics as they are) and the masked mean of each
    behavior field's embeddings over the history, concatenated."""
    parts = [emb.flat(batch.sparse, batch.dense)]
    if emb.spec.hist:
        parts.append(masked_mean(emb.hist(batch.hist).flatten(-2), batch.hist_mask, dim=1))
    return torch.cat(parts, -1)


@dataclass
class TokenInputConfig(UnifiedInputConfig):
    """Inputs of the hierarchical baselines: the EST paper's pooled unified tokens or the FAT paper's field tokens.
    (cand_seq_* and simtier_bins apply to "pooled" only; numeric_buckets to "fields" only.)"""
    inputs: str = checked("pooled", choices=INPUTS)
    numeric_buckets: int = checked(16, ge=2)

    def inactive(self) -> dict[str, str]:
        out = {} if self.inputs == "pooled" else dict.fromkeys(
            ("simtier_bins", "cand_seq_len", "cand_seq_by", "cand_seq_source_len"), "with inputs pooled")
        if self.inputs != "fields":
            out["numeric_buckets"] = "with inputs fields"
        if self.inputs == "plain":  # the models that offer it (MLP, DCNv2) widen the choices
            out["dim"] = "with token inputs (pooled or fields)"
        return out


class TokenInputModel(UnifiedInputModel):
    """A model over a (B, T, d) token matrix `self.inputs(batch)` of either kind; only "pooled" reads content
    vectors and candidate-specific behaviors."""

    @classmethod
    def needs_for(cls, cfg) -> DataNeeds:
        return super().needs_for(cfg) if cfg.inputs == "pooled" else DataNeeds()

    def build_flat_inputs(self, spec: DataSpec, cfg: TokenInputConfig) -> int:
        """Sets self.inputs, whose output flatten(1) reads as one vector per row; returns that vector's width."""
        if cfg.inputs == "plain":  # the tables stay the model's `emb` (state names as DIN's: warm starts match)
            self.emb = FeatureEmbedding(spec, cfg.embed_dim)
            self.inputs = partial(plain_inputs, self.emb)
            return self.emb.out_flat + len(spec.hist) * cfg.embed_dim
        return self.build_inputs(spec, cfg) * cfg.dim

    def build_inputs(self, spec: DataSpec, cfg: TokenInputConfig) -> int:
        """Sets self.inputs; returns the token count T."""
        pooled = cfg.inputs == "pooled"
        self.inputs = PooledInputs(spec, cfg.embed_dim, cfg.dim, cfg.simtier_bins) if pooled else \
            FieldTokens(spec, cfg.embed_dim, cfg.dim, cfg.numeric_buckets)
        return self.inputs.n_tokens
