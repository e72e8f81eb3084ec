"""SIM, the Search-based Interest Model (Pi et al., CIKM 2020): two cascaded search units over a lifelong history.

- General search unit (GSU): for each candidate, the top-k behaviors of the user's WHOLE history (not only the
  recent max_len the loader puts in R_u) form the sub behavior sequence R_c. It runs as a data transform
  (data/gsu.py), declared in `needs_for`:
    search="hard": the paper's category-based hard search, the most recent k behaviors whose category equals the
      candidate's (by="category": the coarsest behavior field a candidate field shares, gsu.category_field);
    search="soft": top-k by inner product of L2-normalised FROZEN pre-trained item vectors (the dataset's
      content table). Ours: this stands in for the paper's embeddings pre-trained on an auxiliary CTR task over
      the long sequence; as in the paper, the search reads pre-trained vectors, offline, not jointly learned ones.
- Exact search unit (ESU): z_j = [e*_j ; e_t(j)], each retrieved behavior's field embeddings concatenated with an
  embedding of its time interval to the request, bucketed by attention.time_bucket (SUAN's log bucket) of
  request time - behavior time. Multi-head target attention as the paper writes it: head i has its own W_b,i and
  W_a,i, att_i = softmax_j((W_b,i z_j) . (W_a,i e_a)) over the valid behaviors (no 1/sqrt(d) scale, as written),
  head_i = sum_j att_i,j z_j (values are the z_j themselves), U_lt = concat(head_1, ..., head_q).
- Short-term interest: DIN target attention (attention.TargetAttention) of the candidate over R_u.
- Head: MLP over [all field embeddings, short-term interest, U_lt].

Choices of ours: topk = 50 and heads = 4 (the paper states neither for its ESU; 50 is the top-k of a public
reproduction on Amazon Books); att_dim, the width of each head's W_a / W_b projections, 16; the time-interval
embedding has width embed_dim, 129 rows (time_bucket's range), init N(0, 0.01) like the field tables; DIN for the
short-term part over R_u; head MLP (200, 80) and DIN's attention MLP (80, 40) with unnormalised weights, as
din.py; R_c is searched over the whole history, so it may repeat behaviors R_u also holds; no auxiliary GSU loss
(the search reads frozen vectors or categories, nothing to train).

Request scoring: encode_user embeds R_u once per request; score_candidates scores C candidates of R requests at
once (R_c (R, C, K)), the DIN attention and the ESU per candidate, in chunks of candidates that bound the
attention MLP's activations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, CandidateSequence, DataNeeds, DataSpec
from ..typed import checked
from .attention import TargetAttention, masked_softmax, split_heads, time_bucket
from .base import CTRModel, UserState
from .config import ModelConfig
from .layers import MLP, require_history
from .registry import register
from .tables import FeatureEmbedding
from .tokens import need_candidate_sequence

SEARCHES = {"hard": "category", "soft": "content"}  # search -> the GSU's CandidateSequence.by
TIME_BUCKETS = 129                                 # time_bucket's range [0, 128]
SCORE_BUDGET = 1 << 21                             # request scoring: DIN hidden floats per candidate chunk


@dataclass
class SIMConfig(ModelConfig):
    embed_dim: int = checked(16, ge=1)
    search: str = checked("hard", choices=tuple(SEARCHES))  # GSU: hard (category) | soft (frozen content vectors)
    topk: int = checked(50, ge=1)           # K, behaviors the GSU retrieves per candidate (ours: 50)
    heads: int = checked(4, ge=1)           # ESU heads (ours: 4)
    att_dim: int = checked(16, ge=1)        # width of each ESU head's query / key projection (ours)
    hidden: tuple[int, ...] = checked((200, 80), ge=1)
    attention_hidden: tuple[int, ...] = checked((80, 40), ge=1)  # DIN's activation unit over R_u
    attention_softmax: bool = False         # DIN keeps the weights unnormalised
    dropout: float = checked(0.0, ge=0, lt=1)


class ExactSearchUnit(nn.Module):
    """The paper's multi-head target attention: query e_a (..., Dq), behaviors z (..., K, Dz), mask (..., K) ->
    (..., H * Dz). Head i scores (W_b,i z_j) . (W_a,i e_a); the H heads' projections are stacked in one Linear."""

    def __init__(self, d_query: int, d_z: int, heads: int, att_dim: int):
        super().__init__()
        self.heads = heads
        self.w_a = nn.Linear(d_query, heads * att_dim, bias=False)   # W_a,1 .. W_a,H
        self.w_b = nn.Linear(d_z, heads * att_dim, bias=False)       # W_b,1 .. W_b,H

    def forward(self, e_a: Tensor, z: Tensor, mask: Tensor) -> Tensor:
        q = split_heads(self.w_a(e_a), self.heads, dim=-2)                     # (..., H, A)
        k = split_heads(self.w_b(z), self.heads, dim=-2)                       # (..., K, H, A)
        scores = torch.einsum("...kha,...ha->...hk", k, q)                     # (..., H, K)
        att = masked_softmax(scores, mask.unsqueeze(-2))                       # (..., H, K); no valid key: zeros
        return (att @ z).flatten(-2)                                           # (..., H, Dz) -> (..., H * Dz)


@register("sim", SIMConfig, "SIM: GSU (hard/soft search over the whole history) + multi-head ESU with time "
                            "intervals, DIN over recent behaviors")
class SIM(CTRModel):
    def __init__(self, spec: DataSpec, cfg: SIMConfig):
        super().__init__()
        require_history(spec, "SIM")
        self.cfg = cfg
        d = cfg.embed_dim
        self.emb = FeatureEmbedding(spec, d)
        d_hist = len(spec.hist) * d
        self.time_emb = nn.Embedding(TIME_BUCKETS, d)
        nn.init.normal_(self.time_emb.weight, std=0.01)
        self.short = TargetAttention(d_hist, cfg.attention_hidden, cfg.attention_softmax)
        self.esu = ExactSearchUnit(d_hist, d_hist + d, cfg.heads, cfg.att_dim)
        self.head = MLP(self.emb.out_flat + d_hist + cfg.heads * (d_hist + d), cfg.hidden, 1, cfg.dropout)

    @classmethod
    def needs_for(cls, cfg: SIMConfig) -> DataNeeds:
        return DataNeeds(cand_seq=CandidateSequence(length=cfg.topk, by=SEARCHES[cfg.search], source_len=0))

    def behaviors(self, cand_hist: Tensor, cand_hist_time: Tensor, time: Tensor) -> Tensor:
        """z: each retrieved behavior's field embeddings and its time-interval embedding, (..., K, D + d);
        time: the request time, broadcastable to cand_hist_time without its last dim."""
        gap = time.unsqueeze(-1) - cand_hist_time                                 # (..., K) seconds
        return torch.cat([self.emb.hist(cand_hist).flatten(-2), self.time_emb(time_bucket(gap))], -1)

    def encode_user(self, context: Batch) -> UserState:
        return UserState(context, history=self.emb.hist(context.hist).flatten(-2))  # (R, L, D) R_u embedded once

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor,
                         cand_hist: Tensor | None = None, cand_hist_time: Tensor | None = None) -> Tensor:
        need_candidate_sequence(cand_hist)
        r, c = cand_sparse.shape[:2]
        step = max(1, SCORE_BUDGET // max(1, r * state.history.shape[1] * self.cfg.attention_hidden[0]))
        return torch.cat([self._score_chunk(state, cand_sparse[:, a:a + step], cand_dense[:, a:a + step],
                                            cand_hist[:, a:a + step], cand_hist_time[:, a:a + step])
                          for a in range(0, c, step)], 1)

    def _score_chunk(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor, cand_hist: Tensor,
                     cand_hist_time: Tensor) -> Tensor:
        ctx, keys = state.context, state.history                                  # keys (R, L, D)
        r, c = cand_sparse.shape[:2]
        query = self.emb.candidate_as_behavior(cand_sparse).flatten(-2)           # (R, C, D)
        # short-term: DIN over R_u for each of the request's C candidates (flatten copies the keys C times: the
        # chunking bounds this too)
        per_cand = lambda t: t.unsqueeze(1).expand(r, c, *t.shape[1:]).flatten(0, 1)  # noqa: E731 (R*C, ...)
        short = self.short(query.flatten(0, 1), per_cand(keys), per_cand(ctx.hist_mask)).view(r, c, -1)  # (R, C, D)
        # long-term: the ESU over each candidate's R_c
        z = self.behaviors(cand_hist, cand_hist_time, ctx.time[:, None])          # (R, C, K, D + d)
        long = self.esu(query, z, cand_hist_time > 0)                             # (R, C, H * (D + d))
        x = torch.cat([self.emb.flat(cand_sparse, cand_dense), short, long], -1)
        return self.head(x).squeeze(-1)                                           # (R, C)
