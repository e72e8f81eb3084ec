"""SparseCTR's EvoAttention kernels (shared/spec/sparsectr.md): chunking, relative encodings and the branches.

Every branch is built from dense blocks, never from per-query gathers (benchmarks.md: those are 10x slower than
full attention on CPU) and never from an (L, L) tensor:
- global and transition keys are sets shared by all queries of one user (|P| chunk summaries, m|P| transition
  behaviors): one (L, K) matmul per user with a mask;
- the local window is blocked: queries of block b (w positions) attend to blocks b-1 and b, a (w, 2w) mask.
The dense masked references beside them (`*_reference`) build the full pattern; tests hold them equal.

Conventions: histories are right-aligned (padding first, hist_time == 0 marks it), q/k/v are (R, H, L, Dh),
positions are 0..L-1, candidates sit at position L with the request time. A query with no allowed key in a
branch gets a zero output for that branch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import table_lookup, time_bucket

CHUNKINGS = ("time", "fixed", "similarity")
ENCODINGS = ("reltemporal", "t5", "alibi", "rope", "hstu", "none")


def masked_softmax_zero(s: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over allowed keys; a row with no allowed key gets all-zero weights (finite gradients too)."""
    s = s.masked_fill(~allowed, torch.finfo(s.dtype).min / 2)
    return torch.softmax(s, -1) * allowed


# ---------------------------------------------------------------------------------------------- chunking
@dataclass
class Chunks:
    """A batch of histories cut into at most P chunks. Chunk 1 is the oldest; 0 is padding (p0)."""
    id: Tensor           # (R, L) chunk of each position, 0 for padding
    valid: Tensor        # (R, P) chunk p+1 exists
    members: Tensor      # (R, P, L) 1/|p| at the members of chunk p+1: members @ X is the chunk mean
    time: Tensor         # (R, P) mean member time (float64 seconds)
    pos: Tensor          # (R, P) mean member position
    trans_idx: Tensor    # (R, P * m) the last m positions of each chunk, chunk-major (0 where absent)
    trans_valid: Tensor  # (R, P * m)


def chunk_ids(times: Tensor, valid: Tensor, n_chunks: int, mode: str = "time", tokens: Tensor | None = None) -> Tensor:
    """(R, L) chunk id of every position, vectorised over users.

    time: cut before the n_chunks - 1 largest positive gaps between adjacent behaviors (behaviors of the same
    second are never split, so a history with fewer distinct gaps gets fewer chunks); similarity: cut where
    adjacent tokens are least similar (cosine); fixed: equal-count chunks of each user's behaviors. Ties in the
    cut score go to the more recent gap."""
    r, n = valid.shape
    if mode == "fixed":
        rank = torch.cumsum(valid.long(), 1) - 1                                    # 0.. among valid
        count = valid.sum(1, keepdim=True)
        parts = torch.minimum(count, torch.full_like(count, n_chunks)).clamp_min(1)
        return torch.where(valid, 1 + rank * parts // count.clamp_min(1), 0)
    if mode not in ("time", "similarity"):
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {mode!r}")
    pair = valid[:, 1:] & valid[:, :-1]                                            # cut before position i + 1
    if mode == "time":
        gap = (times[:, 1:] - times[:, :-1]).double()
        ok = pair & (gap > 0)
    else:
        if tokens is None:
            raise ValueError("similarity chunking needs the behavior tokens")
        gap = 1.0 - F.cosine_similarity(tokens[:, 1:].double(), tokens[:, :-1].double(), dim=-1)
        ok = pair
    tie = torch.arange(1, n, device=valid.device, dtype=torch.float64) / (n + 1)   # prefer recent on ties
    score = torch.where(ok, gap + tie, -1.0)
    cut = torch.zeros(r, n, dtype=torch.bool, device=valid.device)
    k = min(n_chunks - 1, n - 1)
    if k > 0:
        top, where = score.topk(k, dim=1)
        cut[:, 1:] = torch.zeros_like(ok).scatter(1, where, top >= 0)
    return torch.where(valid, 1 + torch.cumsum(cut.long(), 1), 0)


def make_chunks(ids: Tensor, times: Tensor, n_chunks: int, m: int) -> Chunks:
    r, n = ids.shape
    p = torch.arange(1, n_chunks + 1, device=ids.device)
    onehot = ids[:, None, :] == p[None, :, None]                                   # (R, P, L)
    size = onehot.sum(-1)                                                           # (R, P)
    members = onehot.float() / size.clamp_min(1).unsqueeze(-1)
    pos = torch.arange(n, device=ids.device)
    t = (onehot.double() @ times.double().unsqueeze(-1)).squeeze(-1) / size.clamp_min(1)
    mean_pos = (onehot.float() @ pos.float()).div(size.clamp_min(1))
    end = torch.where(onehot, pos, -1).amax(-1)                                    # (R, P)
    start = torch.where(onehot, pos, n).amin(-1)
    idx = end.unsqueeze(-1) - torch.arange(m, device=ids.device)                   # (R, P, m)
    tvalid = (size > 0).unsqueeze(-1) & (idx >= start.unsqueeze(-1))
    return Chunks(ids, size > 0, members, t, mean_pos, idx.clamp_min(0).flatten(1), tvalid.flatten(1))


def chunk_ids_reference(times: Tensor, valid: Tensor, n_chunks: int) -> Tensor:
    """Per-user loop version of time chunking (tests only)."""
    out = torch.zeros_like(times)
    for u in range(times.shape[0]):
        idx = torch.nonzero(valid[u]).squeeze(1).tolist()
        gaps = [(int(times[u, b] - times[u, a]), b) for a, b in zip(idx[:-1], idx[1:])]
        cuts = {b for g, b in sorted((g for g in gaps if g[0] > 0), reverse=True)[:n_chunks - 1]}
        c = 0
        for i in idx:
            c += (i in cuts) or c == 0
            out[u, i] = c
    return out


# ---------------------------------------------------------------------------------------------- encodings
def weekend(t: Tensor) -> Tensor:
    """Saturday or Sunday (UTC) of unix seconds; 1970-01-01 was a Thursday."""
    return (torch.div(t, 86400, rounding_mode="floor").long() + 3) % 7 >= 5


def t5_bucket(d: Tensor, buckets: int = 32, max_distance: int = 128) -> Tensor:
    """T5's causal relative-position bucket: exact below buckets/2, log-spaced up to max_distance."""
    d = d.clamp_min(0)
    exact = buckets // 2
    log = exact + (torch.log(d.float().clamp_min(1) / exact) / math.log(max_distance / exact)
                   * (buckets - exact)).long()
    return torch.where(d < exact, d, log.clamp(max=buckets - 1))


def head_slopes(heads: int) -> Tensor:
    """(2^(-8/H))^(h-1) for h = 1..H: the geometric start of RelTemporal's (and ALiBi's) per-head slopes."""
    return torch.pow(2.0 ** (-8.0 / heads), torch.arange(heads, dtype=torch.float32))


class RelativeEncoding(nn.Module):
    """Additive logit bias from (query, key) times and positions, per head: (R, Lq, K) inputs -> (R, H, Lq, K).

    reltemporal: -floor(log2 dt) s1 - sin(pi hours(dt) / 24) s2 - [weekend differs] s3 (the paper's, parts
    switchable); t5: learned per-head table over T5 position buckets; alibi: -slope * distance (fixed slopes);
    hstu: learned per-head tables over log time buckets and T5 position buckets; rope: no bias, rotates q and k;
    none: no bias."""

    def __init__(self, kind: str, heads: int, head_dim: int, time: bool = True, hour: bool = True,
                 weekend: bool = True):
        super().__init__()
        if kind not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {kind!r}")
        self.kind, self.heads, self.parts = kind, heads, (time, hour, weekend)
        if kind == "reltemporal":
            self.slopes = nn.Parameter(head_slopes(heads).repeat(3, 1))              # (3, H): s1, s2, s3
        elif kind == "alibi":
            self.register_buffer("slopes", head_slopes(heads) * 2.0 ** (-8.0 / heads), persistent=False)
        elif kind in ("t5", "hstu"):
            self.pos_table = nn.Parameter(torch.zeros(32 * heads))
            if kind == "hstu":
                self.time_table = nn.Parameter(torch.zeros(129 * heads))
        elif kind == "rope":
            inv = 1.0 / (10000 ** (torch.arange(0, head_dim // 2, dtype=torch.float32) / max(1, head_dim // 2)))
            self.register_buffer("inv_freq", inv, persistent=False)

    @property
    def has_bias(self) -> bool:
        return self.kind not in ("rope", "none") and (self.kind != "reltemporal" or any(self.parts))

    def forward(self, tq: Tensor, tk: Tensor, pq: Tensor, pk: Tensor) -> Tensor | None:
        if not self.has_bias:
            return None
        h = self.heads
        if self.kind == "reltemporal":  # one (..., parts) x (parts, H) product: no per-part (R, H, Lq, K) temporaries
            dt = (tq - tk).abs()
            feats = []
            if self.parts[0]:
                feats.append((torch.frexp(dt.clamp_min(1).double())[1] - 1).float())  # floor(log2 dt), exact
            if self.parts[1]:
                feats.append(torch.sin(math.pi / 24 * torch.remainder(torch.div(dt, 3600, rounding_mode="floor"), 24)
                                       .float()))
            if self.parts[2]:
                feats.append((weekend(tq) != weekend(tk)).float())
            slopes = self.slopes[[i for i, on in enumerate(self.parts) if on]]          # (parts, H)
            return (torch.stack(feats, -1) @ -slopes).movedim(-1, 1)
        dist = (pq - pk).round().long()
        while dist.dim() < tq.dim():
            dist = dist.unsqueeze(0)
        if self.kind == "alibi":
            return -dist.abs().float().unsqueeze(1) * self.slopes.view(1, h, *([1] * (dist.dim() - 1)))
        heads = torch.arange(h, device=dist.device).view(1, h, *([1] * (dist.dim() - 1)))
        out = table_lookup(self.pos_table, t5_bucket(dist).unsqueeze(1) * h + heads)
        if self.kind == "hstu":
            bucket = time_bucket((tq - tk).double().round().long()).unsqueeze(1)
            out = out + table_lookup(self.time_table, bucket * h + heads)
        return out

    def rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        """RoPE: rotate (R, H, N, Dh) by positions (N,) or (R, N); identity for the other kinds."""
        if self.kind != "rope":
            return x
        ang = pos.float().unsqueeze(-1) * self.inv_freq                               # (.., N, Dh/2)
        if ang.dim() == 3:
            ang = ang.unsqueeze(1)
        cos, sin = ang.cos(), ang.sin()
        half = self.inv_freq.shape[0]
        x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)


# ---------------------------------------------------------------------------------------------- branches
def shared_key_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None) -> Tensor:
    """Queries (R, H, Lq, Dh) against one key set per user (R, H, K, Dh); allowed (R, 1, Lq, K)."""
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if bias is not None:
        s = s + bias
    return masked_softmax_zero(s, allowed) @ v


def local_window_attention(q: Tensor, k: Tensor, v: Tensor, times: Tensor, valid: Tensor, w: int,
                           enc: RelativeEncoding, ku: Tensor | None = None, vu: Tensor | None = None) -> Tensor:
    """Each position attends to the w most recent behaviors up to and including itself, plus the user token
    (ku, vu: (R, H, Dh), no bias). Blocked: O(L w) time and memory, no (L, L) tensor."""
    r, h, n, dh = q.shape
    pad = (-n) % w
    nb = (n + pad) // w

    def blocks(x: Tensor, lead: int) -> Tensor:  # left-pad positions to a multiple of w, split into blocks
        x = F.pad(x, (0, 0) * (x.dim() - lead - 1) + (pad, 0))
        return x.view(*x.shape[:lead], nb, w, *x.shape[lead + 1:])

    def with_prev(x: Tensor, lead: int) -> Tensor:  # (.., nb, w, ..) -> (.., nb, 2w, ..): previous block + own
        prev = F.pad(x, (0, 0) * (x.dim() - lead - 1) + (1, 0)).narrow(lead, 0, nb)
        return torch.cat([prev, x], lead + 1)

    qb = blocks(q, 2)                                                               # (R, H, nb, w, Dh)
    kb, vb = with_prev(blocks(k, 2), 2), with_prev(blocks(v, 2), 2)                  # (R, H, nb, 2w, Dh)
    tb, tk = blocks(times, 1), with_prev(blocks(times, 1), 1)                         # (R, nb, w), (R, nb, 2w)
    okk = with_prev(blocks(valid, 1), 1)
    pos = torch.arange(-pad, n, device=q.device)
    pq, pk = pos.view(nb, w), with_prev(pos.view(1, nb, w), 1)[0]
    a, s_ = torch.arange(w, device=q.device), torch.arange(2 * w, device=q.device)
    off = w + a[:, None] - s_[None, :]                                              # query pos - key pos
    allowed = ((off >= 0) & (off < w)) & okk[:, None, :, None, :]                   # (R, 1, nb, w, 2w)
    s = (qb @ kb.transpose(-1, -2)) * (1.0 / math.sqrt(dh))
    bias = enc(tb.unsqueeze(-1), tk.unsqueeze(-2), pq.unsqueeze(-1).float(), pk.unsqueeze(-2).float())
    if bias is not None:
        s = s + bias
    if ku is None:
        out = masked_softmax_zero(s, allowed) @ vb
    else:
        su = (qb * ku[:, :, None, None]).sum(-1, keepdim=True) * (1.0 / math.sqrt(dh))
        ones = torch.ones_like(allowed[..., :1]).expand(*allowed.shape[:-1], 1)
        wts = masked_softmax_zero(torch.cat([s, su.expand(*s.shape[:-1], 1)], -1), torch.cat([allowed, ones], -1))
        out = wts[..., :-1] @ vb + wts[..., -1:] * vu[:, :, None, None]
    return out.reshape(r, h, nb * w, dh)[:, :, pad:]


def dense_reference(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None) -> Tensor:
    """Softmax over allowed keys, zero rows where none is allowed: the reference every branch is held to."""
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + (0 if bias is None else bias)
    return masked_softmax_zero(s, allowed) @ v


def local_window_reference(q, k, v, times, valid, w, enc, ku=None, vu=None) -> Tensor:
    """Dense (L, L [+ 1]) version of local_window_attention (tests only)."""
    n = q.shape[2]
    pos = torch.arange(n, device=q.device)
    off = pos[:, None] - pos[None, :]
    allowed = ((off >= 0) & (off < w)) & valid[:, None, None, :]
    bias = enc(times[:, :, None], times[:, None, :], pos[:, None].float(), pos[None, :].float())
    bias = torch.zeros(1, device=q.device) if bias is None else bias
    if ku is not None:
        k, v = torch.cat([k, ku.unsqueeze(2)], 2), torch.cat([v, vu.unsqueeze(2)], 2)
        allowed = torch.cat([allowed, torch.ones_like(allowed[..., :1])], -1)
        bias = F.pad(bias.expand(*allowed.shape[:1], q.shape[1], n, n), (0, 1))
    return dense_reference(q, k, v, allowed, bias)


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """Kernelized attention (phi = elu + 1) over behaviors up to and including the query, by prefix sums:
    O(L Dh^2). No relative encoding can enter it (the paper's point)."""
    phi_q, phi_k = F.elu(q) + 1, (F.elu(k) + 1) * valid[:, None, :, None]
    kv = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), 2)                      # (R, H, L, Dh, Dh)
    z = torch.cumsum(phi_k, 2)
    num = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)
    return num / (phi_q * z).sum(-1, keepdim=True).clamp_min(1e-6)
