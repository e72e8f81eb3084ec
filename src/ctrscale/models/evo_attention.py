"""SparseCTR's EvoAttention kernels (shared/spec/sparsectr.md): chunking, relative encodings and the branches.

Every branch is built from dense blocks, never from per-query gathers (benchmarks.md: those are 10x slower than
full attention on CPU) and never from an (L, L) tensor:
- global and transition keys are sets shared by all queries of one user (|P| chunk summaries, m|P| transition
  behaviors): one (L, K) matmul per user and head;
- the local window is w shifted copies of the keys (views): query i scores keys i, i-1, .., i-w+1 elementwise.
The dense masked references beside them (`*_reference`) build the full pattern; tests hold them equal.

Speed on CPU (measured on ml1m batches of ~450 requests x 512 behaviors, 8 heads of width 4) comes from layout:
- heads first: q/k/v are (H, R, L, Dh), so a bias gathered from a (H, codes) table lands contiguous;
- the relative bias of a (query, key) pair depends on a small integer code (RelTemporal: log2 gap x hour gap x
  weekend mismatch), so a branch computes the codes once and gathers its (H, ..) bias and mask in one lookup
  from a table built from the slopes, instead of per-part float features and a (parts, H) product;
- the local window's scores are (H, w + 1, R, L): the softmax runs over a leading dim, vectorised across L.

Conventions: histories are right-aligned (padding first, hist_time == 0 marks it), positions are 0..L-1,
candidates sit at position L with the request time. A query with no allowed key in a branch gets a zero output
for that branch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MASKED, causal_blocked_attention, table_lookup, time_bucket

CHUNKINGS = ("time", "fixed", "similarity")
ENCODINGS = ("reltemporal", "t5", "alibi", "rope", "hstu", "none")


def masked_softmax_zero(s: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over allowed keys; a row with no allowed key gets all-zero weights (finite gradients too)."""
    s = s.masked_fill(~allowed, MASKED)
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

    def codes(self, tq: Tensor, tk: Tensor, pq: Tensor, pk: Tensor) -> Tensor | None:
        """The integer code of every (query, key) pair (inputs broadcast) that forward()'s bias depends on;
        table() maps codes to per-head biases. None for the kinds without a bias."""
        if not self.has_bias:
            return None
        if self.kind == "reltemporal":  # (log2 gap bucket * 24 + hour gap) * 2 + weekend mismatch
            dt = (tq - tk).abs()
            code = torch.zeros((), dtype=torch.long, device=dt.device)
            if self.parts[0]:
                code = (torch.frexp(dt.clamp_min(1).double())[1] - 1).long().clamp_(0, 63) * 48
            if self.parts[1]:
                code = code + torch.remainder(torch.div(dt, 3600, rounding_mode="floor"), 24).long() * 2
            if self.parts[2]:
                code = code + (weekend(tq) != weekend(tk)).long()
            return code.expand(dt.shape)
        dist = (pq - pk).round().long()
        if self.kind == "alibi":
            return dist.abs()
        code = t5_bucket(dist)
        if self.kind == "hstu":
            code = time_bucket((tq - tk).double().round().long()) * 32 + code
        return code

    def table(self, n_codes: int) -> Tensor:
        """(codes, H): the bias of every code; alibi's codes are distances, n_codes of them."""
        h = self.heads
        if self.kind == "reltemporal":
            c = torch.arange(64 * 48, device=self.slopes.device)
            feats = torch.stack([(c // 48).float(), torch.sin(math.pi / 24 * ((c // 2) % 24).float()),
                                 (c % 2).float()], -1)
            on = [i for i, part in enumerate(self.parts) if part]
            return feats[:, on] @ -self.slopes[on]
        if self.kind == "alibi":
            return -torch.arange(n_codes, device=self.slopes.device).float().unsqueeze(-1) * self.slopes
        pos = self.pos_table.view(32, h)
        if self.kind == "t5":
            return pos
        return (self.time_table.view(129, 1, h) + pos).flatten(0, 1)

    def bias_mask(self, tq: Tensor, tk: Tensor, pq: Tensor, pk: Tensor, allowed: Tensor) -> Tensor:
        """The additive logits of forward()'s bias and a mask in one lookup: (H, *allowed.shape), MASKED where a key
        is not allowed; (1, *allowed.shape) for the kinds without a bias."""
        code = self.codes(tq, tk, pq, pk)
        if code is None:
            return torch.where(allowed, 0.0, MASKED).unsqueeze(0)
        table = self.table(int(code.max()) + 1 if self.kind == "alibi" and code.numel() else 1)
        n = table.shape[0]
        table = torch.cat([table, table.new_full((1, self.heads), MASKED)]).t()           # (H, n + 1): n is masked
        return table[:, torch.where(allowed, code, n)]

    def rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        """RoPE: rotate (H, R, N, Dh) (or any (.., N, Dh)) by positions (N,) or (R, N); identity for the other
        kinds."""
        if self.kind != "rope":
            return x
        ang = pos.float().unsqueeze(-1) * self.inv_freq                               # (.., N, Dh/2)
        cos, sin = ang.cos(), ang.sin()
        half = self.inv_freq.shape[0]
        x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)


# ---------------------------------------------------------------------------------------------- branches
def shared_key_attention(q: Tensor, k: Tensor, v: Tensor, bias_mask: Tensor, any_allowed: Tensor) -> Tensor:
    """Queries (H, R, Lq, Dh) against one key set per user (H, R, K, Dh); bias_mask (H or 1, R, Lq, K) from
    RelativeEncoding.bias_mask; any_allowed (R, Lq or 1): rows without an allowed key come out zero."""
    s = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2) + bias_mask
    return (torch.softmax(s, -1) @ v) * any_allowed.unsqueeze(-1)


def local_window_attention(q: Tensor, k: Tensor, v: Tensor, times: Tensor, valid: Tensor, w: int,
                           enc: RelativeEncoding, ku: Tensor | None = None, vu: Tensor | None = None) -> Tensor:
    """Each position attends to the w most recent behaviors up to and including itself, plus the user token
    (ku, vu: (H, R, Dh), no bias). q/k/v (H, R, L, Dh); offset o scores key i - o against query i, so the
    cost is O(L w) with no (L, L) tensor; the w shifted keys are views of one padded copy."""
    n = q.shape[2]
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    kp, vp = F.pad(k, (0, 0, w - 1, 0)), F.pad(v, (0, 0, w - 1, 0))
    shifted = lambda x, o: x.narrow(-2 if x.dim() == 4 else -1, w - 1 - o, n)  # noqa: E731  key i - o at i
    s = torch.stack([(q * shifted(kp, o)).sum(-1) for o in range(w)], 1)             # (H, w, R, L)
    tpad, vpad = F.pad(times, (w - 1, 0)), F.pad(valid, (w - 1, 0))
    tk = torch.stack([shifted(tpad, o) for o in range(w)])                           # (w, R, L)
    allowed = torch.stack([shifted(vpad, o) for o in range(w)])
    pos = torch.arange(n, device=q.device).float()
    pk = (pos - torch.arange(w, device=q.device).unsqueeze(-1)).unsqueeze(1)         # (w, 1, L)
    s = s + enc.bias_mask(times, tk, pos, pk, allowed)
    if ku is not None:  # the user token: always allowed, no bias
        s = torch.cat([s, (q * ku.unsqueeze(2)).sum(-1).unsqueeze(1)], 1)
    a = torch.softmax(s, 1)
    out = sum(a[:, o].unsqueeze(-1) * shifted(vp, o) for o in range(w))
    if ku is None:  # a padding query has no allowed key
        return out * allowed.any(0).unsqueeze(-1)
    return out + a[:, w].unsqueeze(-1) * vu.unsqueeze(2)


def causal_full_attention(q: Tensor, k: Tensor, v: Tensor, times: Tensor, valid: Tensor, enc: RelativeEncoding,
                          block: int | None = None) -> Tensor:
    """Variant A1: causal attention over all behaviors with the same bias, q/k/v (H, R, L, Dh), in query blocks
    (attention.causal_blocked_attention: about half of the L x L square, one block's scores live at a time)."""
    pos = torch.arange(q.shape[2], device=q.device).float()

    def mask(rows: slice, allowed: Tensor) -> Tensor:
        cols = slice(0, rows.stop)
        return enc.bias_mask(times[:, rows, None], times[:, None, cols], pos[rows, None], pos[None, cols], allowed)
    return causal_blocked_attention(q, k, v, valid, mask, block)


def dense_reference(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None) -> Tensor:
    """Softmax over allowed keys, zero rows where none is allowed: the reference every branch is held to.
    Any batch layout; bias and allowed broadcast to the scores."""
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + (0 if bias is None else bias)
    return masked_softmax_zero(s, allowed) @ v


def local_window_reference(q, k, v, times, valid, w, enc, ku=None, vu=None) -> Tensor:
    """Dense (L, L [+ 1]) version of local_window_attention, heads first, bias from enc.forward (tests only)."""
    n = q.shape[2]
    pos = torch.arange(n, device=q.device)
    off = pos[:, None] - pos[None, :]
    allowed = ((off >= 0) & (off < w)) & valid[:, None, :]                           # (R, L, L)
    bias = enc(times[:, :, None], times[:, None, :], pos[:, None].float(), pos[None, :].float())
    bias = torch.zeros(1, 1, 1, 1) if bias is None else bias.transpose(0, 1)           # (H, R, L, L)
    if ku is not None:
        k, v = torch.cat([k, ku.unsqueeze(2)], 2), torch.cat([v, vu.unsqueeze(2)], 2)
        allowed = torch.cat([allowed, torch.ones_like(allowed[..., :1])], -1)
        bias = F.pad(bias.expand(q.shape[0], *allowed.shape[:2], n), (0, 1))
    return dense_reference(q, k, v, allowed, bias)


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """Kernelized attention (phi = elu + 1) over behaviors up to and including the query, by prefix sums:
    O(L Dh^2). q/k/v (H, R, L, Dh), valid (R, L). No relative encoding can enter it (the paper's point)."""
    phi_q, phi_k = F.elu(q) + 1, (F.elu(k) + 1) * valid.unsqueeze(-1)
    kv = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), 2)                      # (H, R, L, Dh, Dh)
    z = torch.cumsum(phi_k, 2)
    num = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)
    return num / (phi_q * z).sum(-1, keepdim=True).clamp_min(1e-6)
