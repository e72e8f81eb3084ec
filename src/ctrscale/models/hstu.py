"""HSTU (Zhai et al., ICML 2024) as a ranker: pointwise aggregated attention over [history; candidate].

Layer (pre-LN): U, V, Q, K = split(SiLU(W x)); A_ij = SiLU(q_i . k_j + rab(t_i - t_j, i - j)) / n_i over the
allowed keys (causal history; a candidate sees the history and itself, never another candidate);
y = W_o (LayerNorm(A V) * U); x <- x + y. n_i = the number of keys query i may see (ours: the paper divides by
the padded length, which would make outputs depend on padding). rab is the log-bucketed time + relative
position bias shared by heads (attention.TimePositionBias). Head: MLP([final candidate state, profile, other
candidate/context features]), the same head SUAN uses, so the comparison isolates the sequence encoder.
History states never depend on the candidate: request scoring encodes the history once per request.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import checked
from .config import ModelConfig
from .attention import TimePositionBias, attention_function, merge_heads, split_heads
from .base import CTRModel, UserState
from .layers import MLP, require_history
from .tables import FeatureEmbedding
from .registry import register


@dataclass
class HSTUConfig(ModelConfig):
    embed_dim: int = checked(8, ge=1)
    layers: int = checked(2, ge=1)
    heads: int = checked(2, ge=1)
    head_hidden: tuple[int, ...] = checked((1024, 512, 256), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)
    max_pos: int = checked(2048, ge=1)


class HSTULayer(nn.Module):
    def __init__(self, dim: int, heads: int, max_pos: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"HSTU: token width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_in, self.norm_att = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.uvqk = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(dim, dim)
        self.bias = TimePositionBias(max_pos)

    def _project(self, x: Tensor):
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, -1)
        return u, *(split_heads(t, self.heads) for t in (v, q, k))

    def _finish(self, x: Tensor, att: Tensor, u: Tensor) -> Tensor:
        return x + self.out(self.norm_att(merge_heads(att)) * u)

    def history(self, x: Tensor, times: Tensor, valid: Tensor, past: tuple[Tensor, Tensor] | None = None):
        """(B, n, D) behavior states -> next states and this layer's (K, V) cache. past: the cached (K, V) of
        earlier behaviors (extension): x is then the n most recent of len(times) behaviors."""
        u, v, q, k = self._project(x)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        n, total = x.shape[1], k.shape[2]
        pos = torch.arange(total, device=x.device)
        q_pos = pos[total - n:]
        allowed = (q_pos[:, None] >= pos[None, :]) & valid[:, None, None, :]
        bias = self.bias(times[:, total - n:, None], times[:, None, :], q_pos[:, None] - pos[None, :]).unsqueeze(1)
        return self._finish(x, attention_function("pointwise")(q, k, v, allowed, bias), u), (k, v)

    def candidates(self, x: Tensor, cache, t_cand: Tensor, times: Tensor, valid: Tensor) -> Tensor:
        kh, vh = cache
        u, v, q, k = self._project(x)                                           # q: (B, H, C, Dh)
        att = attention_function("pointwise_candidates")(q, k, v, kh, vh, t_cand, times, valid, self.bias)
        return self._finish(x, att, u)


class HSTU(CTRModel):
    def __init__(self, spec: DataSpec, cfg: HSTUConfig):
        super().__init__()
        require_history(spec, "HSTU")
        self.cfg = cfg
        d = cfg.embed_dim
        self.emb = FeatureEmbedding(spec, d)
        dim = len(spec.hist) * d
        self.layers = nn.ModuleList(HSTULayer(dim, cfg.heads, cfg.max_pos) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(dim)
        self.head = MLP(dim + self.emb.side_width, cfg.head_hidden, 1, cfg.dropout)

    def encode_user(self, context: Batch) -> UserState:
        x = self.emb.hist(context.hist).flatten(-2)
        caches = []
        for layer in self.layers:
            x, cache = layer.history(x, context.hist_time, context.hist_mask)
            caches.append(cache)
        return UserState(context, caches, profile=self.emb.profile(context.sparse).flatten(-2))

    def extend_user(self, state: UserState, context: Batch, new: int) -> UserState:
        """Causal states with pairwise biases, normalised by the keys up to each query: the first behaviors'
        states do not change when more arrive, so only the `new` ones are encoded, against the cached K/V."""
        old = state.context
        ctx = dataclasses.replace(context, hist=torch.cat([old.hist, context.hist[:, -new:]], 1),
                                  hist_time=torch.cat([old.hist_time, context.hist_time[:, -new:]], 1))
        x = self.emb.hist(ctx.hist[:, -new:]).flatten(-2)
        caches = []
        for layer, past in zip(self.layers, state.caches):
            x, cache = layer.history(x, ctx.hist_time, ctx.hist_mask, past)
            caches.append(cache)
        return UserState(ctx, caches, profile=state.profile)

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor, cand_hist=None,
                         cand_hist_time=None) -> Tensor:  # R_c unused
        ctx = state.context
        r, c = cand_sparse.shape[:2]
        x = self.emb.candidate_as_behavior(cand_sparse).flatten(-2)               # (R, C, D)
        for layer, cache in zip(self.layers, state.caches):
            x = layer.candidates(x, cache, ctx.time, ctx.hist_time, ctx.hist_mask)
        feats = [self.final_norm(x), state.profile.unsqueeze(1).expand(r, c, -1),
                 self.emb.other_flat(cand_sparse, cand_dense)]
        return self.head(torch.cat(feats, -1)).squeeze(-1)


register("hstu", HSTUConfig, "HSTU: pointwise (SiLU) aggregated attention with time/position bias")(HSTU)
