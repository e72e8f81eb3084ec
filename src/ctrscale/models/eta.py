"""ETA (Chen et al., 2021, "End-to-End User Behavior Retrieval in Click-Through Rate Prediction Model",
arXiv 2108.04468): long-term interest by SimHash retrieval inside the CTR model, trained end to end.

Long-term interest. ETA's long sequence is R_u, the whole loaded history (batch.hist): set data.max_len to cover
the whole history you mean to search. Each behavior token (its field embeddings concatenated, width D) and the
candidate (candidate_as_behavior) get a SimHash code: the signs of their projections onto `hash_bits` (m) fixed
random Gaussian directions, a buffer drawn from `hash_seed` at init and saved in the state dict. The Hamming
distance of the candidate's code to every valid behavior's picks the `top_k` nearest behaviors; multi-head target
attention (query: the candidate, keys/values: the picked behaviors, padding masked) pools them. The codes are
recomputed from the current embeddings at every step (so retrieval follows training, the paper's end-to-end
point); no gradient flows through sign or top-k, gradients reach the embeddings through the attention over the
picked behaviors. Short-term interest: multi-head target attention over the `short_len` most recent behaviors.
Head: MLP([profile, candidate/context fields and numerics, short-term, long-term]).

Fast path: with codes in {-1, +1}, Hamming = (m - c . b) / 2, one (R, C, m) x (R, m, L) matmul for all candidates
of a request (in fp32 with autocast off, so the integer distances are exact); `hamming_reference` compares bit by
bit and the tests hold both to the same top-k. Request scoring: encode_user embeds R_u and hashes it once (and
projects the short-term keys/values); score_candidates hashes the C candidates, takes the (R, C, L) distances, the
top-k of each candidate and its gathered attention, vectorised.

Choices:
- hash_bits m = 4: the value reported for the paper (its SimHash maps a d = 128 embedding to m = 4 bits) by two
  secondary sources (a paper-reading note and the ReChorus ETA implementation); the paper's own text was not
  reachable to confirm it. With m = 4 there are only five distances, so ties are common and the recency tie rule
  below decides among them; raise hash_bits for a finer retrieval.
- top_k = 50 (ours: the paper's k was not confirmed), heads = 4 (ours), short_len = 50 (ours/paper's "recent"
  sequence), embed_dim 16 and head MLP (200, 80) (ours, DIN's).
- Ties in Hamming distance go to the most recent behavior (ours: deterministic); padding (hist_time == 0) is never
  picked, and with fewer than k valid behaviors the remaining slots are masked.
- A code's sign(0) is +1 (ours), so codes are always +-1.
- Only the behavior fields that have a candidate counterpart (hist_to_sparse, e.g. item id and category, not the
  action) are hashed (ours): the candidate has zeros in behavior-only slots, which would otherwise skew its code.
  All fields when none is aligned.
- Separate attention weights for the long- and short-term parts (ours); scaled dot-product softmax attention with
  bias-free Q/K/V projections and an output projection (ours, the Transformer's).
- Long-term keys/values: projection commutes with gathering, so score_candidates projects all L behaviors once
  and gathers when its candidates pick at least L in all (request scoring), else projects only the picked ones
  (pointwise training: k of L); the tests hold both equal. The short-term keys/values are projected in encode_user.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import checked
from .attention import attention_function, merge_heads, split_heads
from .base import CTRModel, UserState
from .config import ModelConfig
from .layers import MLP, require_history
from .registry import register
from .tables import FeatureEmbedding


@dataclass
class ETAConfig(ModelConfig):
    embed_dim: int = checked(16, ge=1)
    hash_bits: int = checked(4, ge=1)       # m: SimHash code length
    top_k: int = checked(50, ge=1)          # k behaviors retrieved from R_u per candidate
    heads: int = checked(4, ge=1)
    short_len: int = checked(50, ge=1)      # the most recent behaviors of the short-term attention
    hidden: tuple[int, ...] = checked((200, 80), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)
    hash_seed: int = checked(0, ge=0)       # seed of the fixed random hash directions


def simhash(x: Tensor, planes: Tensor) -> Tensor:
    """(..., D) vectors, (D, m) directions -> (..., m) codes in {-1, +1}: the signs of the projections (0 -> +1)."""
    return torch.where(x @ planes >= 0, 1.0, -1.0)


def hamming_matmul(cand: Tensor, beh: Tensor) -> Tensor:
    """+-1 codes (R, C, m) and (R, L, m) -> (R, C, L) int64 Hamming distances, (m - c . b) / 2 as one matmul."""
    m = cand.shape[-1]
    return ((m - cand @ beh.transpose(-1, -2)) / 2).round().long()


def hamming_reference(cand: Tensor, beh: Tensor) -> Tensor:
    """The same distances by comparing the codes bit by bit: (R, C, 1, m) != (R, 1, L, m), counted."""
    return (cand.unsqueeze(2) != beh.unsqueeze(1)).sum(-1)


def nearest(dist: Tensor, valid: Tensor, k: int, hash_bits: int) -> tuple[Tensor, Tensor]:
    """The k behaviors nearest each candidate: (R, C, L) distances, (R, L) valid -> (R, C, min(k, L)) positions and
    whether each is a real behavior. Ties go to the most recent (larger position); padding ranks after every valid
    behavior, so it is picked only when fewer than k are valid, and then masked."""
    n = dist.shape[-1]
    pos = torch.arange(n, device=dist.device)
    far = (~valid).long().unsqueeze(1) * (hash_bits + 1)                      # (R, 1, L) padding beyond any distance
    key = (dist + far) * n + (n - 1 - pos)                                    # unique per position: no ties left
    idx = key.topk(min(k, n), dim=-1, largest=False, sorted=True).indices    # (R, C, k)
    picked = torch.gather(valid.unsqueeze(1).expand_as(dist), -1, idx)
    return idx, picked


class MultiHeadTargetAttention(nn.Module):
    """The candidate (query) over behaviors (keys/values): softmax(q k / sqrt(Dh)) v per head, padding masked."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ETA: token width {dim} (behavior fields x embed_dim) is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def keys_values(self, behaviors: Tensor) -> tuple[Tensor, Tensor]:  # (..., L, D) -> two (..., L, D)
        k, v = self.kv(behaviors).chunk(2, -1)
        return k, v

    def forward(self, query: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
        """query (N, Lq, D), keys/values (N, Lk, D), valid (N, Lk) -> (N, Lq, D); no valid key gives out.bias."""
        q, k, v = (split_heads(t, self.heads) for t in (self.q(query), k, v))    # (N, H, L, Dh)
        att = attention_function("dense")(q, k, v, valid[:, None, None, :])
        return self.out(merge_heads(att))


class ETA(CTRModel):
    def __init__(self, spec: DataSpec, cfg: ETAConfig):
        super().__init__()
        require_history(spec, "ETA")
        self.cfg = cfg
        d = cfg.embed_dim
        self.emb = FeatureEmbedding(spec, d)
        dim = len(spec.hist) * d
        aligned = [j for j, a in enumerate(spec.hist_to_sparse) if a >= 0] or list(range(len(spec.hist)))
        self.register_buffer("_hash_fields", torch.tensor(aligned, dtype=torch.long), persistent=False)
        g = torch.Generator().manual_seed(cfg.hash_seed)
        self.register_buffer("hash_planes", torch.randn(len(aligned) * d, cfg.hash_bits, generator=g))
        self.long_attention = MultiHeadTargetAttention(dim, cfg.heads)
        self.short_attention = MultiHeadTargetAttention(dim, cfg.heads)
        self.head = MLP(self.emb.side_width + 2 * dim, cfg.hidden, 1, cfg.dropout)

    def codes(self, fields: Tensor) -> Tensor:
        """(..., F_hist, d) field embeddings -> (..., m) +-1 SimHash codes of the hashed fields; no gradient, fp32."""
        with torch.no_grad(), torch.autocast(fields.device.type, enabled=False):
            x = fields.detach().index_select(-2, self._hash_fields).flatten(-2).float()
            return simhash(x, self.hash_planes)

    def encode_user(self, context: Batch) -> UserState:
        fields = self.emb.hist(context.hist)                                         # (R, L, F_hist, d)
        beh = fields.flatten(-2)                                                     # (R, L, D)
        s = min(self.cfg.short_len, beh.shape[1])
        k_short, v_short = self.short_attention.keys_values(beh[:, beh.shape[1] - s:])  # (R, S, D) each
        return UserState(context, [self.codes(fields), k_short, v_short], history=beh,
                         profile=self.emb.profile(context.sparse).flatten(-2))

    def retrieve(self, state: UserState, cand_fields: Tensor) -> tuple[Tensor, Tensor]:
        """(R, C, F_hist, d) candidates -> (R, C, k) positions of their nearest behaviors in R_u, and real-ness."""
        beh_codes = state.caches[0]
        with torch.autocast(beh_codes.device.type, enabled=False):
            dist = hamming_matmul(self.codes(cand_fields), beh_codes)                # (R, C, L)
        return nearest(dist, state.context.hist_mask, self.cfg.top_k, self.cfg.hash_bits)

    def picked_keys_values(self, history: Tensor, idx: Tensor, project_all: bool | None = None):
        """Keys/values of the picked behaviors: history (R, L, D), idx (R, C, k) -> two (R, C, k, D). Projecting
        commutes with gathering, so project the L behaviors once and gather when the candidates pick at least L in
        all (request scoring), else gather the picked ones and project those (pointwise: k of L)."""
        rows = torch.arange(idx.shape[0], device=idx.device)[:, None, None]
        if project_all is None:
            project_all = idx[0].numel() >= history.shape[1]
        if project_all:
            k, v = self.long_attention.keys_values(history)                          # (R, L, D) each
            return k[rows, idx], v[rows, idx]
        return self.long_attention.keys_values(history[rows, idx])

    def long_interest(self, state: UserState, cand_fields: Tensor) -> Tensor:
        """(R, C, F_hist, d) -> (R, C, D): target attention over each candidate's top-k retrieved behaviors."""
        r, c = cand_fields.shape[:2]
        idx, picked = self.retrieve(state, cand_fields)                              # (R, C, k)
        k_sel, v_sel = self.picked_keys_values(state.history, idx)                   # (R, C, k, D) each
        query = cand_fields.flatten(-2).reshape(r * c, 1, -1)                        # (R C, 1, D)
        out = self.long_attention(query, k_sel.flatten(0, 1), v_sel.flatten(0, 1), picked.flatten(0, 1))
        return out.view(r, c, -1)

    def short_interest(self, state: UserState, cand_fields: Tensor) -> Tensor:
        """(R, C, F_hist, d) -> (R, C, D): target attention over the short_len most recent behaviors."""
        k_short, v_short = state.caches[1:3]
        valid = state.context.hist_mask[:, state.context.hist_mask.shape[1] - k_short.shape[1]:]   # (R, S)
        return self.short_attention(cand_fields.flatten(-2), k_short, v_short, valid)

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor, cand_hist=None,
                         cand_hist_time=None) -> Tensor:  # R_c unused: ETA retrieves from R_u itself
        r, c = cand_sparse.shape[:2]
        cand = self.emb.candidate_as_behavior(cand_sparse)                          # (R, C, F_hist, d)
        feats = [state.profile.unsqueeze(1).expand(r, c, -1), self.emb.other_flat(cand_sparse, cand_dense),
                 self.short_interest(state, cand), self.long_interest(state, cand)]
        return self.head(torch.cat(feats, -1)).squeeze(-1)


register("eta", ETAConfig, "ETA: SimHash top-k retrieval from the long history + multi-head target attention")(ETA)
