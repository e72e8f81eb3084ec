"""Unified inputs for EST and the baselines of its Table 3: every non-behavioral field as a width-d token (an
embedding, then a linear map of its own), the SimTier token, and tokens for the behaviors of R_u and R_c (one
tokenizer per sequence kind: the behavior's field embeddings concatenated, then linear).

The hierarchical baselines (MLP, DCNv2, AutoInt, RankMixer, HiFormer) pool each sequence into one token with
DIN's target attention, as the EST paper does for them: `PooledInputs` gives the (B, n_N + 2, d) token matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import DataNeeds, Batch, CandidateSequence, DataSpec
from ..typed import checked
from .config import ModelConfig
from .base import CTRModel
from .content import ContentTable, simtier
from .attention import TargetAttention
from .layers import TokenLinear, require_history
from .tables import FeatureEmbedding


@dataclass
class UnifiedInputConfig(ModelConfig):
    """The input settings every unified-token model shares; its config dataclass inherits them."""
    embed_dim: int = checked(16, ge=1)
    dim: int = checked(64, ge=1)                # token width d
    simtier_bins: int = checked(10, ge=0)       # 0: no SimTier token
    cand_seq_len: int = checked(20, ge=1)       # K_c, the GSU's R_c length (the EST paper: 50)
    cand_seq_by: str = "content"  # soft search by content cosine, or a behavior field for hard search
    cand_seq_source_len: int = checked(0, ge=0)  # search the most recent this-many behaviors; 0 = the whole history


class UnifiedInputModel(CTRModel):
    """A model reading unified inputs (`self.inputs`): the registry hands it the content table, the loaders give
    it R_c (both declared in `needs_for`)."""

    @classmethod
    def needs_for(cls, cfg) -> DataNeeds:
        return DataNeeds(content=True, cand_seq=candidate_sequence_of(cfg))

    def set_content(self, table: Tensor) -> None:
        self.inputs.set_content(table)


class UnifiedInputs(nn.Module):
    def __init__(self, spec: DataSpec, embed_dim: int, dim: int, simtier_bins: int = 10):
        super().__init__()
        require_history(spec, "a unified-token model")
        self.emb = FeatureEmbedding(spec, embed_dim)
        self.content = ContentTable(spec)
        n_fields = len(spec.sparse) + len(spec.dense)
        self.field_tokens = TokenLinear(n_fields, embed_dim, dim)          # one tokenizer per feature
        self.bins = simtier_bins
        self.simtier = nn.Linear(2 * simtier_bins, dim) if simtier_bins else None
        self.user_seq = nn.Linear(len(spec.hist) * embed_dim, dim)         # one tokenizer per sequence kind
        self.cand_seq = nn.Linear(len(spec.hist) * embed_dim, dim)
        self.n_tokens = n_fields + (1 if simtier_bins else 0)

    def set_content(self, table: Tensor) -> None:
        self.content.load(table)

    def non_behavioral(self, sparse: Tensor, dense: Tensor, user_vecs: Tensor, mask_u: Tensor, cand_vecs: Tensor,
                       mask_c: Tensor) -> Tensor:
        """(..., n_N, d): the field tokens, then SimTier (histograms of the candidate's content cosine to the
        behaviors of R_u and of R_c). user_vecs / cand_vecs: behavior content vectors (..., L, Dc)."""
        tokens = self.field_tokens(torch.cat([self.emb.sparse(sparse), self.emb.numeric(dense)], -2))
        if self.simtier is None:
            return tokens
        cand = self.content.of_items(sparse)
        hist = torch.cat([simtier(cand, user_vecs, mask_u, self.bins), simtier(cand, cand_vecs, mask_c, self.bins)], -1)
        return torch.cat([tokens, self.simtier(hist).unsqueeze(-2)], -2)

    def user_tokens(self, hist: Tensor) -> Tensor:        # (..., L, F_hist) -> (..., L, d)
        return self.user_seq(self.emb.hist(hist).flatten(-2))

    def cand_tokens(self, cand_hist: Tensor) -> Tensor:   # (..., K, F_hist) -> (..., K, d)
        return self.cand_seq(self.emb.hist(cand_hist).flatten(-2))

    def candidate_queries(self, sparse: Tensor) -> tuple[Tensor, Tensor]:
        """The candidate read as a behavior, through each sequence's tokenizer: target-attention queries."""
        as_behavior = self.emb.candidate_as_behavior(sparse).flatten(-2)
        return self.user_seq(as_behavior), self.cand_seq(as_behavior)

    def of_batch(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """N tokens (B, n_N, d), R_u tokens (B, L, d) and R_c tokens (B, K, d) of a pointwise batch."""
        need_candidate_sequence(batch.cand_hist)
        mask_u, mask_c = batch.hist_mask, batch.cand_hist_mask
        n_tok = self.non_behavioral(batch.sparse, batch.dense, self.content.of_behaviors(batch.hist), mask_u,
                                    self.content.of_behaviors(batch.cand_hist), mask_c)
        return n_tok, self.user_tokens(batch.hist), self.cand_tokens(batch.cand_hist)


class PooledInputs(nn.Module):
    """[N tokens ; DIN(R_u) ; DIN(R_c)]: the hierarchical baselines' (B, n_N + 2, d) input."""

    def __init__(self, spec: DataSpec, embed_dim: int, dim: int, simtier_bins: int = 10,
                 attention_hidden: tuple[int, ...] = (64, 32)):
        super().__init__()
        self.unified = UnifiedInputs(spec, embed_dim, dim, simtier_bins)
        self.pool_u = TargetAttention(dim, attention_hidden)
        self.pool_c = TargetAttention(dim, attention_hidden)
        self.n_tokens = self.unified.n_tokens + 2

    def set_content(self, table: Tensor) -> None:
        self.unified.set_content(table)

    def forward(self, batch: Batch) -> Tensor:
        n_tok, s_u, s_c = self.unified.of_batch(batch)
        q_u, q_c = self.unified.candidate_queries(batch.sparse)
        pooled = torch.stack([self.pool_u(q_u, s_u, batch.hist_mask), self.pool_c(q_c, s_c, batch.cand_hist_mask)], 1)
        return torch.cat([n_tok, pooled], 1)


def candidate_sequence_of(cfg) -> CandidateSequence:
    """The GSU setting from a model config's cand_seq_len / cand_seq_by / cand_seq_source_len."""
    return CandidateSequence(cfg.cand_seq_len, cfg.cand_seq_by, cfg.cand_seq_source_len)


def need_candidate_sequence(cand_hist) -> None:
    if cand_hist is None:
        raise ValueError("this model reads candidate-specific behaviors R_c: load batches with "
                         "LoaderConfig(cand_seq=model.needs.cand_seq)")
