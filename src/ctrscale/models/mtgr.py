"""MTGR (Han et al., 2025, "MTGR: Industrial-Scale Generative Recommendation Framework in Meituan", arXiv
2505.18654): HSTU-style generative ranking that keeps the DLRM's cross features.

One request is one token sequence [user features ; history ; candidates], all of width `dim`:
- user: one token per user-role field (its embedding, or a numeric field's affine map, then a linear map of its own);
- history: one token per behavior, its field embeddings concatenated, then linear (shared by the behaviors);
- candidate: one token per candidate from its own features and the user-item cross features a DLRM reads, which
  plain HSTU drops: its item and context fields and numerics and, with cand_seq_len > 0, its R_c (the GSU's top-k
  behaviors by content cosine over the whole history) pooled by a masked mean; concatenated, then linear.
Layer (HSTU's, pre-norm): U, V, Q, K = split(SiLU(W GLN(x))); A_i = sum_j SiLU(q_i . k_j + rab_ij) v_j / n_i over
the keys i may see; x <- x + W_o(GLN(A) * U). Group Layer Normalization (GLN): every token group (user, history,
candidates) has LayerNorms of its own in both places, in every layer; the projections are shared (as in the paper).
Dynamic masking: the user tokens and the static history see each other (full visibility); the `realtime` most recent
behaviors (the paper's real-time sequence) see every static token and, causally, each other; a candidate sees the
user, the whole history and itself, never another candidate. Padding (hist_time == 0) is never a key.
Head: MLP over the candidate's final state (the paper's towers read the candidate tokens).

User-level compression: no user or history state depends on a candidate, so all candidates of a request share one
pass over [user ; history]. encode_user runs it and caches every layer's K/V; score_candidates pushes C candidates
through the layers against that cache, vectorised; the recipe trains on whole requests (DataNeeds.listwise).

Choices of ours (the paper leaves them open or our data differs):
- realtime = 0: the whole history is static. The paper's causal real-time part hides behaviors that happened after
  an earlier exposure when several requests of a user are compressed into one sample; here one sample is one
  request whose history all precedes it, so nothing can leak. realtime >= the history length makes the history
  fully causal, and then extend_user encodes only new behaviors against the cached K/V (as hstu.py).
- rab: HSTU's time + position bias shared by the heads (attention.TimePositionBias) between history and candidate
  tokens (candidates at position L with the request time); 0 on every pair with a user token (it has neither).
- n_i: the number of keys query i may see (hstu.py's choice; the padded length would make padding matter).
- R_c is pooled by a masked mean of its behaviors' concatenated field embeddings (zeros when none is valid): R_c is
  already the candidate's most similar behaviors, and a mean is the DLRM-style statistic; target attention would
  add a second relevance weighting on top of the GSU's.
- A final LayerNorm (the candidate group's) before the head; user tokens get a linear map per field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch, CandidateSequence, DataNeeds, DataSpec
from ..typed import check_heads, checked
from .attention import TimePositionBias, attention_function, merge_heads, split_heads
from .base import CTRModel, UserState
from .config import ModelConfig
from .layers import MLP, TokenLinear, masked_mean, require_history
from .registry import register
from .tables import FeatureEmbedding
from .tokens import need_candidate_sequence

GROUPS = ("user", "history", "candidate")


@dataclass
class MTGRConfig(ModelConfig):
    embed_dim: int = checked(16, ge=1)
    dim: int = checked(64, ge=1)                 # token width d
    layers: int = checked(2, ge=1)
    heads: int = checked(2, ge=1)
    realtime: int = checked(0, ge=0)             # the most recent behaviors attended causally (0: all static)
    cand_seq_len: int = checked(0, ge=0)         # K_c of R_c pooled into the candidate token (0: no R_c)
    head_hidden: tuple[int, ...] = checked((256, 64), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)
    max_pos: int = checked(2048, ge=1)           # relative positions beyond this share one bias entry

    def __post_init__(self):
        super().__post_init__()
        check_heads(self.dim, self.heads)


class GroupLayerNorm(nn.Module):
    """A LayerNorm per token group: x (..., N, D) of one group -> normalised with that group's parameters."""

    def __init__(self, dim: int):
        super().__init__()
        self.norms = nn.ModuleDict({g: nn.LayerNorm(dim) for g in GROUPS})

    def forward(self, x: Tensor, group: str) -> Tensor:
        return self.norms[group](x)


def visibility(n_user: int, valid: Tensor, realtime: int, rows: Tensor | None = None) -> Tensor:
    """The dynamic mask over [user ; history] tokens: (R, Q, n_user + L) bool, query tokens `rows` (token indices,
    default all). A static key (a user token or a behavior older than the `realtime` most recent) is seen by every
    query; a real-time key only by real-time queries at or after it; padding by none."""
    r, n_hist = valid.shape
    n = n_user + n_hist
    tok = torch.arange(n, device=valid.device)
    rows = tok if rows is None else rows
    static = tok < n_user + max(n_hist - realtime, 0)
    key_ok = torch.cat([valid.new_ones(r, n_user), valid], 1)                          # (R, n)
    causal = ~static[rows, None] & (tok[None, :] <= rows[:, None])                      # (Q, n)
    return key_ok[:, None, :] & (static[None, :] | causal)


def user_side_bias(bias: TimePositionBias, n_user: int, times: Tensor, rows: Tensor | None = None) -> Tensor:
    """rab over [user ; history]: (R, 1, Q, n_user + L); 0 on pairs with a user token."""
    n_hist = times.shape[1]
    pos = torch.arange(n_hist, device=times.device)
    rows = torch.arange(n_user + n_hist, device=times.device) if rows is None else rows
    q = rows - n_user                                                                    # query history positions
    hb = bias(times[:, q.clamp_min(0), None], times[:, None, :], q[:, None] - pos[None, :])   # (R, Q, L)
    hb = hb * (q >= 0)[:, None]                                                          # user queries: 0
    return F.pad(hb, (n_user, 0)).unsqueeze(1)


def candidate_attention(q: Tensor, k: Tensor, v: Tensor, keys_k: Tensor, keys_v: Tensor, key_bias: Tensor,
                        key_ok: Tensor, self_bias: Tensor) -> Tensor:
    """C candidates q, k, v (R, H, C, Dh) against the cached [user ; history] keys (R, H, n, Dh) and themselves,
    never each other: one matmul shared by the candidates, the own key an elementwise product. key_bias, key_ok
    (R, n); self_bias (R, 1). The pointwise (SiLU) weights are divided by the number of keys seen."""
    w = F.silu(q @ keys_k.transpose(-1, -2) + key_bias[:, None, None, :]) * key_ok[:, None, None, :]   # (R,H,C,n)
    w_self = F.silu((q * k).sum(-1, keepdim=True) + self_bias[:, None, None, :])                   # (R,H,C,1)
    return (w @ keys_v + w_self * v) / key_ok.sum(-1).add(1).view(-1, 1, 1, 1)


class MTGRLayer(nn.Module):
    """HSTU's layer with group layer norms; `user_side` and `candidates` are its two passes."""

    def __init__(self, dim: int, heads: int, max_pos: int):
        super().__init__()
        self.heads = heads
        self.norm_in, self.norm_att = GroupLayerNorm(dim), GroupLayerNorm(dim)
        self.uvqk = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(dim, dim)
        self.bias = TimePositionBias(max_pos)

    def project(self, x: Tensor, group: str):
        """(..., N, D) tokens of one group -> U (..., N, D) and V, Q, K (..., H, N, Dh)."""
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x, group))).chunk(4, -1)
        return u, *(split_heads(t, self.heads) for t in (v, q, k))

    def finish(self, x: Tensor, att: Tensor, u: Tensor, group: str) -> Tensor:
        return x + self.out(self.norm_att(merge_heads(att), group) * u)

    def user_side(self, xu: Tensor, xh: Tensor, allowed: Tensor, bias: Tensor):
        """User (R, n_u, D) and history (R, L, D) states -> their next states and this layer's (K, V) cache."""
        (uu, vu, qu, ku), (uh, vh, qh, kh) = self.project(xu, "user"), self.project(xh, "history")
        q, k, v = torch.cat([qu, qh], 2), torch.cat([ku, kh], 2), torch.cat([vu, vh], 2)   # (R, H, n, Dh)
        att = attention_function("pointwise")(q, k, v, allowed.unsqueeze(1), bias)
        n_u = xu.shape[1]
        return self.finish(xu, att[:, :, :n_u], uu, "user"), self.finish(xh, att[:, :, n_u:], uh, "history"), (k, v)

    def history_extension(self, xh: Tensor, past: tuple[Tensor, Tensor], allowed: Tensor, bias: Tensor):
        """The newest behaviors' states (R, m, D) against the cached keys and themselves (causal history only)."""
        u, v, q, k = self.project(xh, "history")
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        att = attention_function("pointwise")(q, k, v, allowed.unsqueeze(1), bias)
        return self.finish(xh, att, u, "history"), (k, v)

    def candidates(self, xc: Tensor, cache: tuple[Tensor, Tensor], key_bias: Tensor, key_ok: Tensor,
                   self_bias: Tensor) -> Tensor:
        u, v, q, k = self.project(xc, "candidate")                                           # q (R, H, C, Dh)
        return self.finish(xc, candidate_attention(q, k, v, *cache, key_bias, key_ok, self_bias), u, "candidate")


class MTGR(CTRModel):
    def __init__(self, spec: DataSpec, cfg: MTGRConfig):
        super().__init__()
        require_history(spec, "MTGR")
        self.cfg = cfg
        e, d = cfg.embed_dim, cfg.dim
        self.emb = FeatureEmbedding(spec, e)
        self.user_fields = spec.sparse_of_role("user")
        self.cand_fields = spec.sparse_of_role("item", "context")
        self.user_dense = [i for i, f in enumerate(spec.dense) if spec.roles[f] == "user"]
        self.cand_dense = [i for i, f in enumerate(spec.dense) if spec.roles[f] != "user"]
        self.n_user = len(self.user_fields) + len(self.user_dense)
        behavior = len(spec.hist) * e
        self.user_tokens = TokenLinear(self.n_user, e, d)
        self.hist_tokens = nn.Linear(behavior, d)
        cand_in = (len(self.cand_fields) + len(self.cand_dense)) * e + (behavior if cfg.cand_seq_len else 0)
        self.cand_tokens = nn.Linear(cand_in, d)
        self.layers = nn.ModuleList(MTGRLayer(d, cfg.heads, cfg.max_pos) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(d)
        self.head = MLP(d, cfg.head_hidden, 1, cfg.dropout)

    @classmethod
    def needs_for(cls, cfg: MTGRConfig) -> DataNeeds:
        cand_seq = CandidateSequence(cfg.cand_seq_len, "content", 0) if cfg.cand_seq_len else None
        return DataNeeds(listwise=True, cand_seq=cand_seq)

    # --- tokens ------------------------------------------------------------------------------------------------------
    def _fields(self, sparse: Tensor, dense: Tensor, fields: list[int], numerics: list[int]) -> Tensor:
        """(..., n, e) embeddings of the chosen sparse fields, then of the chosen numeric ones."""
        parts = [self.emb.sparse(sparse, fields)] if fields else []
        if numerics:
            parts.append(self.emb.numeric(dense)[..., numerics, :])
        return torch.cat(parts, -2) if parts else sparse.new_zeros(*sparse.shape[:-1], 0, self.cfg.embed_dim,
                                                                   dtype=torch.float32)

    def user_token_states(self, context: Batch) -> Tensor:  # (R, n_u, d)
        return self.user_tokens(self._fields(context.sparse, context.dense, self.user_fields, self.user_dense))

    def candidate_token_states(self, cand_sparse: Tensor, cand_dense: Tensor, cand_hist: Tensor | None,
                               cand_hist_time: Tensor | None) -> Tensor:  # (R, C, d)
        feats = [self._fields(cand_sparse, cand_dense, self.cand_fields, self.cand_dense).flatten(-2)]
        if self.cfg.cand_seq_len:
            need_candidate_sequence(cand_hist)
            rc = self.emb.hist(cand_hist).flatten(-2)                                        # (R, C, K, F_hist * e)
            feats.append(masked_mean(rc, cand_hist_time > 0, dim=-2))                        # R_c: a cross feature
        return self.cand_tokens(torch.cat(feats, -1))

    # --- request scoring: [user ; history] once per request, then any number of candidates ----------------------
    def encode_user(self, context: Batch) -> UserState:
        xu, xh = self.user_token_states(context), self.hist_tokens(self.emb.hist(context.hist).flatten(-2))
        allowed = visibility(self.n_user, context.hist_mask, self.cfg.realtime)             # (R, n, n)
        caches = []
        for layer in self.layers:
            xu, xh, cache = layer.user_side(xu, xh, allowed, user_side_bias(layer.bias, self.n_user,
                                                                            context.hist_time))
            caches.append(cache)
        return UserState(context, caches)

    def extend_user(self, state: UserState, context: Batch, new: int) -> UserState | None:
        """When the whole history is causal (realtime covers it), the earlier tokens' states do not change as
        behaviors arrive: only the `new` ones are encoded, against the cached K/V."""
        old = state.context
        ctx = dataclasses.replace(context, hist=torch.cat([old.hist, context.hist[:, -new:]], 1),
                                  hist_time=torch.cat([old.hist_time, context.hist_time[:, -new:]], 1))
        if self.cfg.realtime < ctx.hist.shape[1]:
            return None
        n_tok = self.n_user + ctx.hist.shape[1]
        rows = torch.arange(n_tok - new, n_tok, device=ctx.hist.device)
        allowed = visibility(self.n_user, ctx.hist_mask, self.cfg.realtime, rows)           # (R, new, n)
        xh = self.hist_tokens(self.emb.hist(ctx.hist[:, -new:]).flatten(-2))
        caches = []
        for layer, past in zip(self.layers, state.caches):
            bias = user_side_bias(layer.bias, self.n_user, ctx.hist_time, rows)
            xh, cache = layer.history_extension(xh, past, allowed, bias)
            caches.append(cache)
        return UserState(ctx, caches)

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor,
                         cand_hist: Tensor | None = None, cand_hist_time: Tensor | None = None) -> Tensor:
        ctx = state.context
        times, n_hist = ctx.hist_time, ctx.hist.shape[1]
        key_ok = torch.cat([ctx.hist_mask.new_ones(len(times), self.n_user), ctx.hist_mask], 1)   # (R, n)
        rel = n_hist - torch.arange(n_hist, device=times.device)                             # candidates sit at L
        x = self.candidate_token_states(cand_sparse, cand_dense, cand_hist, cand_hist_time)  # (R, C, d)
        for layer, cache in zip(self.layers, state.caches):
            key_bias = F.pad(layer.bias(ctx.time[:, None], times, rel[None, :]), (self.n_user, 0))   # (R, n)
            self_bias = layer.bias(ctx.time[:, None], ctx.time[:, None], rel.new_zeros(1))           # (R, 1)
            x = layer.candidates(x, cache, key_bias, key_ok, self_bias)
        return self.head(self.final_norm(x)).squeeze(-1)


register("mtgr", MTGRConfig, "MTGR: HSTU over [user features ; history ; candidates with cross features], "
                             "group layer norm, dynamic masking")(MTGR)
