"""The one family of relative biases: additive attention logits from (query, key) times and positions.

TimePositionBias (SUAN, HSTU): one scalar table over log time buckets and one over |i - j|, shared by the heads.
RelativeEncoding (SparseCTR): per-head RelTemporal, T5, ALiBi, HSTU-style tables, RoPE or none, with the integer
codes its blocked kernels look the bias and mask up by. Both gather from small tables with table_lookup.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from .core import MASKED

# bias_fn(t_query, t_key, rel_pos) -> additive logit bias, broadcastable; times in unix seconds, rel_pos = i - j
BiasFn = Callable[[Tensor, Tensor, Tensor], Tensor]
ENCODINGS = ("reltemporal", "t5", "alibi", "rope", "hstu", "none")


class _SmallTableLookup(torch.autograd.Function):
    """table[idx] for a tiny table and a huge index tensor. Autograd's embedding backward scatters one row per
    index (1 s for B*L*L indices on CPU); the same gradient is one bincount."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.size = table.shape[0]
        return table[idx]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        g = torch.bincount(idx.reshape(-1), weights=grad.reshape(-1).float(), minlength=ctx.size)
        return g.to(grad.dtype), None


def table_lookup(table: Tensor, idx: Tensor) -> Tensor:
    """Gather scalars from a 1-D table; gradients accumulate by bincount (tested against autograd's)."""
    return _SmallTableLookup.apply(table, idx)


def time_bucket(dt: Tensor) -> Tensor:
    """SUAN's bucket of a time gap in seconds: floor(ln(max(|dt|, 1)) / 0.301), clipped to [0, 128]."""
    return torch.floor(torch.log(dt.abs().clamp_min(1).float()) / 0.301).clamp_(0, 128).long()


class TimePositionBias(nn.Module):
    """b_ij = f1(bucket(|t_i - t_j|)) + f2(i - j), one scalar table each, shared by all heads (SUAN).
    Relative positions beyond max_pos share the last entry."""

    def __init__(self, max_pos: int = 2048, time: bool = True, position: bool = True):
        super().__init__()
        self.time_table = nn.Parameter(torch.zeros(129)) if time else None
        self.pos_table = nn.Parameter(torch.zeros(max_pos + 1)) if position else None
        self.max_pos = max_pos

    def forward(self, t_q: Tensor, t_k: Tensor, rel_pos: Tensor) -> Tensor:
        out = 0.0
        if self.time_table is not None:
            out = out + table_lookup(self.time_table, time_bucket(t_q - t_k))
        if self.pos_table is not None:
            out = out + table_lookup(self.pos_table, rel_pos.abs().clamp(max=self.max_pos))
        return out


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


