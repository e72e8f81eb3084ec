"""TWIN-V2 (Si et al., CIKM 2024) on TWIN (Chang et al., KDD 2023): clustered life-long behaviors, a consistency-
preserved GSU and a cluster-aware ESU.

1. Compression (TWIN-V2). The valid behaviors of R_u are grouped into clusters of at most `max_cluster_size`
   members; each cluster becomes one "virtual item": the categorical (id) features of the member closest to the
   cluster's mean embedding, and the average of the members' numeric features, here the time interval
   (request time - behavior time), plus the cluster size n.
2. Target attention with split features (TWIN). Inherent features (the representative's id embeddings x_h) are
   projected once per request, K_h = x_h W_h; cross features (time-interval bucket, cluster-size bucket) are
   reduced to one scalar bias per head: logit_h = (q W_q)_h (K_h)_h^T / sqrt(d_h) + (K_c W_c beta)_h.
3. CP-GSU (TWIN): the clusters are ranked by that same logit (averaged over heads) and the top `top_k` kept.
4. Cluster-aware ESU (TWIN-V2): multi-head target attention over the kept clusters with the same projections and
   weights proportional to n * exp(logit) (log n added to the logit), padding masked; values V = [x_h, K_c] W_v,
   heads merged through W_o.
5. Head: MLP([profile, candidate/context fields, ESU output, DIN target attention over the `short_len` most
   recent behaviors]).

Request scoring: encode_user clusters the history, builds the representatives and their K_h and inherent values
once (it never reads the request time); score_candidates adds the time-dependent cross features per cluster and
scores C candidates against all clusters at once, (R, C, n_clusters), then top-k and attention.

Choices of ours:
- Clustering (the paper runs recursive k-means offline, after grouping by play-completion ratio, which our data
  lack) is a random-projection tree built per request without gradient from the detached behavior embeddings
  (the behavior fields' embeddings concatenated): at tree level l every cluster larger than `max_cluster_size` is
  sorted along the fixed direction u_l (one per level, drawn from a fixed seed, the same for every model) and split
  at its median, the first ceil(n / 2) going left; ties in the projection go by behavior index (older first).
  Vectorised over rows with sorts, one loop over the ceil(log2(L / max_cluster_size)) levels; at most
  min(L, 2^levels) clusters per row. Projections are exact integer dot products of the embeddings rounded to
  2^-20 (so they do not depend on the batch a row sits in, and identical behaviors tie exactly); distances are
  float64; all of it outside autocast.
- The representative is the member of least squared distance to the cluster mean, the oldest among ties
  (distances equal within a relative 1e-9).
- Cross features: log-bucketed (SUAN's time_bucket) mean time interval and the cluster size (1..max_cluster_size),
  each an embedding of embed_dim; the paper's K_c W_c beta is one linear map of their concatenation to H biases.
  The cross embeddings also enter the values (TWIN's values read all features).
- GSU ranks clusters by the head-averaged logit without the log n term (the cluster-aware term is the ESU's).
- Defaults: max_cluster_size 8 and top_k 16, so at ml1m's L = 512 the 64 clusters are cut to 16 covering up to
  128 behaviors (TWIN's ESU reads 100); 4 heads as TWIN's ESU; the short-term DIN attention unnormalised (DIN's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import check_heads, checked
from .attention import MASKED, TargetAttention, masked_softmax, merge_heads, split_heads, time_bucket
from .base import CTRModel, UserState
from .config import ModelConfig
from .layers import MLP, require_history
from .registry import register
from .tables import FeatureEmbedding

MAX_LEVELS = 40        # tree depth the direction buffer allows: histories up to max_cluster_size * 2^40
DIRECTION_SEED = 0     # the projection directions are the same for every model (ours)
TIME_BUCKETS = 129     # time_bucket's range 0..128


@dataclass
class TWINV2Config(ModelConfig):
    embed_dim: int = checked(16, ge=1)
    heads: int = checked(4, ge=1)
    attn_dim: int = checked(32, ge=1)            # width of q W_q, K_h and V over all heads
    max_cluster_size: int = checked(8, ge=1)
    top_k: int = checked(16, ge=1)               # clusters the GSU passes to the ESU
    short_len: int = checked(50, ge=1)           # most recent behaviors of the short-term DIN attention
    short_hidden: tuple[int, ...] = checked((80, 40), ge=1)
    hidden: tuple[int, ...] = checked((200, 80), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)

    def __post_init__(self):
        super().__post_init__()
        check_heads(self.attn_dim, self.heads)


def tree_levels(length: int, max_size: int) -> int:
    """Levels of median bisection after which no cluster of a `length`-behavior history exceeds max_size."""
    levels = 0
    while max_size << levels < length:
        levels += 1
    return levels


def projections(x: Tensor, directions: Tensor) -> Tensor:
    """(R, L, D) embeddings -> (R, L, levels) projections, exact: the embeddings rounded to multiples of 2^-20
    (clipped to +-2^10) and the directions to multiples of 2^-8 make every product and partial sum an integer
    below 2^53 in float64, so a projection never depends on the summation order (the batch it sits in), and
    identical behaviors tie exactly."""
    xq = torch.round(x.detach().float().clamp(-1024, 1024) * 2.0 ** 20).double()
    dq = torch.round(directions.double().clamp(-16, 16) * 2.0 ** 8)
    return xq @ dq.t()


@torch.no_grad()
def cluster_behaviors(x: Tensor, valid: Tensor, directions: Tensor, max_size: int) -> tuple[Tensor, int]:
    """Random-projection-tree clustering of each row's valid behaviors.

    x (R, L, D) behavior embeddings, valid (R, L), directions (>= levels, D) -> (member (R, L) in [0, N]: the
    behavior's cluster, N for padding; N = min(L, 2^levels), the clusters a row can have). A cluster is a
    contiguous range [start, start + size) of positions in the order the last sort left; each level sorts every
    cluster along its direction (by projection, ties by behavior index) and splits the large ones at the median."""
    r, length = valid.shape
    levels = tree_levels(length, max_size)
    n_clusters = min(length, 2 ** levels)
    positions = torch.arange(length, device=x.device).expand(r, length)
    # each behavior's rank along every direction, ties by index (stable): (R, levels, L)
    by_proj = torch.argsort(projections(x, directions[:levels]).transpose(1, 2), dim=-1, stable=True)
    rank = torch.empty_like(by_proj).scatter_(-1, by_proj, positions.unsqueeze(1).expand_as(by_proj))
    start = torch.where(valid, 0, length)            # (R, L): start position of each behavior's cluster
    size = torch.where(valid, valid.sum(1, keepdim=True), 0)   # (R, L): its size (padding: 0, never split)
    for level in range(levels):
        order = torch.argsort(start * length + rank[:, level], dim=1)              # position -> behavior
        pos = torch.empty_like(order).scatter_(1, order, positions)                 # behavior -> position
        left = (size + 1) // 2
        split = size > max_size
        right = split & (pos - start >= left)
        start = torch.where(right, start + left, start)
        size = torch.where(split, torch.where(right, size - left, left), size)
    is_start = torch.zeros(r, length + 1, dtype=torch.long, device=x.device).scatter_(1, start, 1)
    cluster_of_start = is_start[:, :length].cumsum(1) - 1
    member = torch.where(valid, cluster_of_start.gather(1, start.clamp(max=length - 1)), n_clusters)
    return member, n_clusters


@torch.no_grad()
def summarise_clusters(x: Tensor, valid: Tensor, hist_time: Tensor, member: Tensor, n_clusters: int):
    """Each cluster's virtual item: (representative (R, N) behavior index, size (R, N) long, mean behavior time
    (R, N) float64). The representative is the member nearest the cluster's mean embedding (oldest among ties);
    empty clusters (size 0) get index L - 1 and are masked by their users."""
    r, length, d = x.shape
    x = x.double()                                   # padding sits in the dummy cluster N: never mixed in
    w = valid.double()
    size = x.new_zeros(r, n_clusters + 1).scatter_add_(1, member, w)
    total = x.new_zeros(r, n_clusters + 1, d).scatter_add_(1, member.unsqueeze(-1).expand(r, length, d), x)
    mean = total / size.clamp_min(1).unsqueeze(-1)                                   # (R, N + 1, D)
    dist = (x - mean.gather(1, member.unsqueeze(-1).expand(r, length, d))).square_().sum(-1)   # (R, L)
    best = torch.full_like(size, math.inf).scatter_reduce_(1, member, dist, "amin")
    near = valid & (dist <= best.gather(1, member) * (1 + 1e-9) + 1e-300)
    index = torch.where(near, torch.arange(length, device=x.device), length)
    rep = torch.full((r, n_clusters + 1), length, dtype=torch.long, device=x.device)
    rep = rep.scatter_reduce_(1, member, index, "amin")[:, :n_clusters].clamp(max=length - 1)
    mean_time = (x.new_zeros(r, n_clusters + 1).scatter_add_(1, member, hist_time.double() * w)
                 / size.clamp_min(1))[:, :n_clusters]
    return rep, size[:, :n_clusters].long(), mean_time


def cluster_aware_attention(logits: Tensor, values: Tensor, size: Tensor, valid: Tensor) -> Tensor:
    """TWIN-V2's ESU weights n_j exp(logit_j) / sum_i n_i exp(logit_i) over the valid clusters:
    logits (..., k), size and valid broadcastable to them, values (..., k, Dv) -> (..., Dv); zeros when none is
    valid."""
    w = masked_softmax(logits + size.clamp_min(1).to(logits.dtype).log(), valid)
    return (w.unsqueeze(-2) @ values).squeeze(-2)


@register("twinv2", TWINV2Config, "TWIN-V2: clustered history, consistency-preserved GSU, cluster-aware ESU")
class TWINV2(CTRModel):
    def __init__(self, spec: DataSpec, cfg: TWINV2Config):
        super().__init__()
        require_history(spec, "TWIN-V2")
        self.cfg = cfg
        d, a, h = cfg.embed_dim, cfg.attn_dim, cfg.heads
        self.emb = FeatureEmbedding(spec, d)
        dim = len(spec.hist) * d
        self.w_q = nn.Linear(dim, a, bias=False)
        self.w_h = nn.Linear(dim, a, bias=False)                 # inherent features -> K_h
        self.time_emb = nn.Embedding(TIME_BUCKETS, d)             # cross features
        self.size_emb = nn.Embedding(cfg.max_cluster_size + 1, d)
        self.cross_bias = nn.Linear(2 * d, h, bias=False)         # K_c W_c beta: one scalar per head
        self.v_h = nn.Linear(dim, a)                              # V = [x_h, K_c] W_v, split in its two parts
        self.v_c = nn.Linear(2 * d, a, bias=False)
        self.w_o = nn.Linear(a, a)
        self.short = TargetAttention(dim, cfg.short_hidden)
        self.head = MLP(self.emb.side_width + a + dim, cfg.hidden, 1, cfg.dropout)
        g = torch.Generator().manual_seed(DIRECTION_SEED)
        self.register_buffer("directions", torch.randn(MAX_LEVELS, dim, generator=g, dtype=torch.float64),
                             persistent=False)

    # ---- user side: once per request ----------------------------------------------------------------------------

    def clusters(self, x: Tensor, context: Batch):
        """(member, n_clusters, representative, size, mean time) of the request rows' histories."""
        valid = context.hist_mask
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            member, n = cluster_behaviors(x.detach(), valid, self.directions, self.cfg.max_cluster_size)
            rep, size, mean_time = summarise_clusters(x.detach(), valid, context.hist_time, member, n)
        return member, n, rep, size, mean_time

    def encode_user(self, context: Batch) -> UserState:
        x = self.emb.hist(context.hist).flatten(-2)                                  # (R, L, D)
        _, _, rep, size, mean_time = self.clusters(x, context)
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
        x_rep = x[rows, rep]                                                         # (R, N, D) virtual items
        s = min(self.cfg.short_len, x.shape[1])
        cache = {"keys": self.w_h(x_rep), "values": self.v_h(x_rep), "size": size, "mean_time": mean_time,
                 "short": x[:, -s:], "short_valid": context.hist_mask[:, -s:]}
        return UserState(context, [cache], profile=self.emb.profile(context.sparse).flatten(-2))

    # ---- candidate side ------------------------------------------------------------------------------------------

    def cross(self, cache: dict, time: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head cross bias (R, N, H) and full values (R, N, attn_dim) of the clusters at request time `time`."""
        bucket = time_bucket(time.double().unsqueeze(1) - cache["mean_time"])        # (R, N)
        size = cache["size"].clamp(max=self.cfg.max_cluster_size)
        k_c = torch.cat([self.time_emb(bucket), self.size_emb(size)], -1)            # (R, N, 2d)
        return self.cross_bias(k_c), cache["values"] + self.v_c(k_c)

    def logits(self, q: Tensor, keys: Tensor, bias: Tensor) -> Tensor:
        """The one target-attention logit GSU and ESU share: q (..., H, Cq, dh), keys (..., H, N, dh),
        bias (..., H, 1, N) -> (..., H, Cq, N)."""
        return q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias

    def gsu(self, q: Tensor, cache: dict, bias: Tensor) -> tuple[Tensor, Tensor]:
        """q (R, C, H, dh) -> (logits (R, H, C, N) of every cluster, pick (R, C, k): the top-k clusters by the
        head-averaged logit, empty clusters last)."""
        keys = split_heads(cache["keys"], self.cfg.heads)                            # (R, H, N, dh)
        logits = self.logits(q.transpose(1, 2), keys, bias.transpose(1, 2).unsqueeze(2))
        score = logits.mean(1).masked_fill(~(cache["size"] > 0).unsqueeze(1), MASKED)   # (R, C, N)
        k = min(self.cfg.top_k, score.shape[-1])
        return logits, score.topk(k, dim=-1).indices

    def esu(self, q: Tensor, cache: dict, pick: Tensor, bias: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Cluster-aware multi-head target attention over the picked clusters: q (R, C, H, dh), pick (R, C, k) ->
        (interest (R, C, attn_dim), logits (R, C, H, 1, k))."""
        h = self.cfg.heads
        rows = torch.arange(pick.shape[0], device=pick.device)[:, None, None]
        keys = split_heads(cache["keys"][rows, pick], h, dim=-3)                    # (R, C, H, k, dh)
        vals = split_heads(values[rows, pick], h, dim=-3)
        b = bias[rows, pick].movedim(-1, -2).unsqueeze(-2)                           # (R, C, H, 1, k)
        logits = self.logits(q.unsqueeze(-2), keys, b)                               # (R, C, H, 1, k)
        size = cache["size"][rows, pick].unsqueeze(2)                                # (R, C, 1, k)
        out = cluster_aware_attention(logits.squeeze(-2), vals, size, size > 0)      # (R, C, H, dh)
        return self.w_o(merge_heads(out, dim=-2)), logits

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor, cand_hist=None,
                         cand_hist_time=None) -> Tensor:  # R_c unused
        cache, ctx = state.caches[0], state.context
        r, c = cand_sparse.shape[:2]
        target = self.emb.candidate_as_behavior(cand_sparse).flatten(-2)            # (R, C, D)
        q = split_heads(self.w_q(target), self.cfg.heads, dim=-2)                   # (R, C, H, dh)
        bias, values = self.cross(cache, ctx.time)
        _, pick = self.gsu(q, cache, bias)
        interest, _ = self.esu(q, cache, pick, bias, values)                         # (R, C, attn_dim)
        keys, kv = cache["short"], cache["short_valid"]
        s, dim = keys.shape[1], keys.shape[2]
        short = self.short(target.reshape(r * c, dim), keys.unsqueeze(1).expand(r, c, s, dim).reshape(r * c, s, dim),
                           kv.unsqueeze(1).expand(r, c, s).reshape(r * c, s)).view(r, c, dim)
        feats = [state.profile.unsqueeze(1).expand(r, c, -1), self.emb.other_flat(cand_sparse, cand_dense),
                 interest, short]
        return self.head(torch.cat(feats, -1)).squeeze(-1)
