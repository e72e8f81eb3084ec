"""LONGER (Chai et al., RecSys 2025): token merge + hybrid attention over a long history, global tokens, KV cache.

Tokens. A behavior is its field embeddings concatenated and mapped to width D, plus two side signals (ours, the
paper adds "positional side information" without fixing it): an embedding of the log-bucketed gap between the
behavior and the most recent behavior (attention.time_bucket; the gap to the *latest behavior* rather than to the
request, so the user side depends on the history only and is cached), and a learned embedding of the behavior's
recency rank (0 = most recent). Padded behaviors are zero tokens.
Global tokens (the paper's: the target item, the user's id/profile, CLS-like tokens): the candidate in the
behavior slots (same map) plus the embedding of the gap from the latest behavior to the request (ours; a row of
its own when there is no behavior yet); one
profile token (ours: all user fields concatenated and mapped to D, user id included); `cls_tokens` learned tokens.
Token merge: groups of `merge` adjacent behaviors (ours: aligned from the most recent, so the last group is full
and the oldest one is padded) become one token: the paper's InnerTrans (one small pre-norm transformer block inside
each group, its real members attending to each other both ways (ours), padded members masked and zeroed), then
concat + linear to D; `merger: concat` is the paper's plain concat + linear. A group with no real behavior is
masked everywhere.
Hybrid attention (pre-norm blocks, RMSNorm + SwiGLU FFN: ours). Layer 1 is cross-attention: queries are the
global tokens and the `recent` most recent merged tokens (the paper's best query sampling: the most recent ones),
keys/values are the global tokens and all merged tokens. Layers 2..`layers` are self-attention over those queries
only. Mask: merged tokens are causal (a merged query sees merged keys at or before its own position); the user-side
global tokens (profile, CLS) are seen by every query and see every real merged token; the candidate's token sees
everything and is seen by no other token (the paper's serving mask), so every user-side state is candidate-free.
Head (ours, as HSTU's and SUAN's): MLP([final candidate state, flattened profile, other candidate/context features]).
Request scoring (the paper's KV-cache serving): encode_user merges the history and runs the user-side queries
through all layers once, caching each layer's K/V; score_candidates pushes the C candidate tokens through the
layers, each attending to the cached K/V and to itself, vectorised over (R, C). forward() is that path with C = 1;
tests hold it equal to dense attention over the full token set [candidate; profile; CLS; merged]. A grown history
shifts the group boundaries, so extend_user re-encodes (the default).
Defaults (ours): embed_dim 8 per field (as HSTU/SUAN), D = 32, 2 layers, 4 heads, merge 4 and recent 32 (at
L = 512: 128 merged tokens, the 32 most recent of them queries; the paper samples 100 of 2,000), 1 CLS token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import check_heads, checked
from .attention import attention_function, merge_heads, split_heads, time_bucket
from .base import CTRModel, UserState
from .config import ModelConfig
from .layers import MLP, RMSNorm, SwiGLU, require_history
from .registry import register
from .tables import FeatureEmbedding

MERGERS = ("innertrans", "concat")


NO_BEHAVIOR = 129  # the candidate's gap row when the user has no behavior yet

@dataclass
class LONGERConfig(ModelConfig):
    embed_dim: int = checked(8, ge=1)          # per field
    dim: int = checked(32, ge=1)               # token width D
    layers: int = checked(2, ge=1)             # 1 cross-attention layer + (layers - 1) self-attention layers
    heads: int = checked(4, ge=1)
    merge: int = checked(4, ge=1)              # behaviors per merged token (K); L = 512 -> 128 merged tokens
    merger: str = checked("innertrans", choices=MERGERS)  # innertrans (the paper's) | concat (+ linear)
    recent: int = checked(32, ge=0)            # most recent merged tokens used as queries (0: global tokens only)
    cls_tokens: int = checked(1, ge=0)         # learned global tokens
    ffn_mult: int = checked(2, ge=1)           # SwiGLU hidden width = ffn_mult * dim
    max_pos: int = checked(2048, ge=1)         # recency ranks beyond this share one embedding
    head_hidden: tuple[int, ...] = checked((1024, 512, 256), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)

    def __post_init__(self):
        super().__post_init__()
        check_heads(self.dim, self.heads)


class Block(nn.Module):
    """Pre-norm attention + SwiGLU block; keys/values are computed once and handed out as the layer's cache."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.ffn = SwiGLU(dim, ffn_mult)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # (B, N, D) -> 3 x (B, H, N, Dh)
        return tuple(split_heads(t, self.heads) for t in self.qkv(self.norm1(x)).chunk(3, -1))

    def finish(self, x: Tensor, att: Tensor) -> Tensor:  # x (B, N, D), att (B, H, N, Dh)
        x = x + F.dropout(self.out(merge_heads(att)), self.dropout, self.training)
        return x + F.dropout(self.ffn(self.norm2(x)), self.dropout, self.training)

    def forward(self, x: Tensor, rows: Tensor | None, allowed: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Tokens x (B, N, D) are the keys and values; x[:, rows] the queries (rows None: all of them);
        allowed (B, Q, N). -> the queries' next states (B, Q, D) and this layer's (K, V) (B, H, N, Dh)."""
        q, k, v = self.project(x)
        xq = x if rows is None else x[:, rows]
        if xq.shape[1] == 0:  # no query at all (no global token, recent = 0)
            return xq, (k, v)
        q = q if rows is None else q[:, :, rows]
        att = attention_function("dense", "sdpa")(q, k, v, allowed.unsqueeze(1))
        return self.finish(xq, att), (k, v)


def user_mask(key_pos: Tensor, key_valid: Tensor, query_pos: Tensor) -> Tensor:
    """(B, Q, N) allowed pairs of the user side: key_pos (N,) is -1 for a global token, the merged index for a
    sequence token; query_pos (Q,) is a large number for a global token (it sees every real key). A key is seen
    when it is real and not after the query (global keys are always real and before everything)."""
    return (key_pos[None, None, :] <= query_pos[None, :, None]) & key_valid[:, None, :]


class LONGER(CTRModel):
    def __init__(self, spec: DataSpec, cfg: LONGERConfig):
        super().__init__()
        require_history(spec, "LONGER")
        self.cfg = cfg
        d, dim = cfg.embed_dim, cfg.dim
        self.emb = FeatureEmbedding(spec, d)
        self.behavior = nn.Linear(len(spec.hist) * d, dim)                         # behavior and candidate tokens
        self.gap_emb = nn.Embedding(130, dim)            # time_bucket's range 0..128, and 129: no behavior yet
        self.pos_emb = nn.Embedding(cfg.max_pos, dim)
        for e in (self.gap_emb, self.pos_emb):
            nn.init.normal_(e.weight, std=0.01)
        self.n_user = len(spec.sparse_of_role("user"))
        self.profile_token = nn.Linear(self.n_user * d, dim) if self.n_user else None
        self.cls = nn.Parameter(torch.randn(cfg.cls_tokens, dim) * 0.02)
        self.inner = Block(dim, cfg.heads, cfg.ffn_mult, cfg.dropout) if cfg.merger == "innertrans" else None
        self.merge_proj = nn.Linear(cfg.merge * dim, dim)
        self.blocks = nn.ModuleList(Block(dim, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.layers))
        self.final_norm = RMSNorm(dim)
        self.head = MLP(dim + self.emb.side_width, cfg.head_hidden, 1, cfg.dropout)

    # --- tokens -------------------------------------------------------------------------------------------------
    def behavior_tokens(self, hist: Tensor, hist_time: Tensor) -> Tensor:
        """(R, L, F_hist) ids, (R, L) times -> (R, L, D); padded behaviors are zero tokens."""
        valid = hist_time > 0
        n = hist.shape[1]
        gap = time_bucket(hist_time[:, -1:] - hist_time)                           # to the most recent behavior
        rank = (n - 1 - torch.arange(n, device=hist.device)).clamp(max=self.cfg.max_pos - 1)
        x = self.behavior(self.emb.hist(hist).flatten(-2)) + self.gap_emb(gap) + self.pos_emb(rank)
        return x * valid.unsqueeze(-1)

    def merge_tokens(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(R, L, D) behavior tokens -> (R, M, D) merged tokens and (R, M) their validity, M = ceil(L / K); groups
        are aligned from the most recent behavior (the oldest group is padded on the left)."""
        r, n, dim = x.shape
        k = self.cfg.merge
        m = -(-n // k)
        pad = m * k - n
        groups = F.pad(x, (0, 0, pad, 0)).view(r, m, k, dim)                       # (R, M, K, D)
        member = F.pad(valid, (pad, 0)).view(r, m, k)                              # (R, M, K)
        if self.inner is not None:  # InnerTrans: attention among the real members of each group
            flat, ok = groups.flatten(0, 1), member.flatten(0, 1)                  # (R M, K, D), (R M, K)
            allowed = ok[:, None, :].expand(-1, k, -1)                             # (R M, K, K)
            inner = self.inner(flat, None, allowed)[0] * ok.unsqueeze(-1)
            groups = inner.view(r, m, k, dim)
        return self.merge_proj(groups.flatten(-2)), member.any(-1)

    def global_user_tokens(self, sparse: Tensor) -> Tensor:
        """(R, G_u, D): the profile token (when the data has user fields) and the learned CLS tokens."""
        r = sparse.shape[0]
        toks = [self.cls.unsqueeze(0).expand(r, -1, -1)]
        if self.profile_token is not None:
            toks.insert(0, self.profile_token(self.emb.profile(sparse).flatten(-2)).unsqueeze(1))
        return torch.cat(toks, 1)

    def candidate_tokens(self, cand_sparse: Tensor, ctx: Batch) -> Tensor:
        """(R, C, F_sparse) -> (R, C, D): the candidate in the behavior slots + the gap from the latest behavior to
        the request."""
        last = ctx.hist_time[:, -1]                     # 0 when the history is empty: no latest behavior
        gap = torch.where(last > 0, time_bucket(ctx.time - last), NO_BEHAVIOR)     # (R,)
        return self.behavior(self.emb.candidate_as_behavior(cand_sparse).flatten(-2)) + self.gap_emb(gap)[:, None]

    # --- request scoring ----------------------------------------------------------------------------------------
    def encode_user(self, context: Batch) -> UserState:
        valid = context.hist_mask
        merged, m_valid = self.merge_tokens(self.behavior_tokens(context.hist, context.hist_time), valid)
        user = self.global_user_tokens(context.sparse)                              # (R, G_u, D)
        r, m, g = merged.shape[0], merged.shape[1], user.shape[1]
        s = min(self.cfg.recent, m)
        dev = merged.device
        seq_pos, sampled = torch.arange(m, device=dev), torch.arange(m - s, m, device=dev)
        glob_pos = torch.full((g,), -1, device=dev)                                 # before every key
        glob_ok = torch.ones(r, g, dtype=torch.bool, device=dev)
        q_pos = torch.cat([torch.full((g,), m, device=dev), sampled])               # a global query sees all keys
        # layer 1 (cross): queries [globals; the s most recent merged], keys [globals; all merged]
        x = torch.cat([user, merged], 1)                                            # (R, G_u + M, D)
        rows = torch.cat([torch.arange(g, device=dev), g + sampled])
        key_pos, key_valid = torch.cat([glob_pos, seq_pos]), torch.cat([glob_ok, m_valid], 1)
        caches = []
        for block in self.blocks:
            x, (k, v) = block(x, rows, user_mask(key_pos, key_valid, q_pos))
            caches.append((k, v, key_valid))
            # layers 2..: self-attention over the queries only
            rows, key_pos = None, torch.cat([glob_pos, sampled])
            key_valid = torch.cat([glob_ok, m_valid[:, m - s:]], 1)
        profile = self.emb.profile(context.sparse).flatten(-2) if self.n_user else merged.new_zeros(r, 0)
        return UserState(context, caches, history=x, profile=profile)

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor, cand_hist=None,
                         cand_hist_time=None) -> Tensor:  # R_c unused
        ctx = state.context
        r, c = cand_sparse.shape[:2]
        x = self.candidate_tokens(cand_sparse, ctx)                                 # (R, C, D)
        for block, (kh, vh, key_valid) in zip(self.blocks, state.caches):
            q, k, v = block.project(x)                                              # (R, H, C, Dh)
            att = attention_function("candidate")(q, k, v, kh, vh, None, None, key_valid, None)
            x = block.finish(x, att)
        feats = [self.final_norm(x), state.profile.unsqueeze(1).expand(r, c, -1),
                 self.emb.other_flat(cand_sparse, cand_dense)]
        return self.head(torch.cat(feats, -1)).squeeze(-1)


register("longer", LONGERConfig, "LONGER: token merge (InnerTrans) + hybrid cross/self attention with global "
                                 "tokens, KV-cached")(LONGER)
