"""SUAN's kernels: causal self-attention over one history (full, or LightSUAN's local + dilated pattern) and the
candidates' cross-attention over the cached history. Each has a dense reference beside it.

Conventions: q, k, v are (B, H, L, Dh); `key_valid` (B, L) marks real behaviors; a query may always attend to
itself, so no row is fully masked (padded queries produce finite values that nothing reads).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .bias import BiasFn
from .core import MASKED, dense_attention, with_own_key

MaskFn = Callable[[slice, Tensor], Tensor]


def sparse_pattern(n: int, local: int, dilation: int, device=None) -> Tensor:
    """(n, n) bool: key j visible to query i when j <= i and (i - j < local or (i - j) % dilation == 0)."""
    i = torch.arange(n, device=device).unsqueeze(1)
    j = torch.arange(n, device=device).unsqueeze(0)
    d = i - j
    return (d >= 0) & ((d < local) | (d % dilation == 0))


def causal_reference(q, k, v, times: Tensor, key_valid: Tensor, bias_fn: BiasFn | None, local: int = 0,
                     dilation: int = 1) -> Tensor:
    """Dense reference of the (sparse) causal self-attention over one history: builds the (L, L) pattern."""
    n = q.shape[2]
    pos = torch.arange(n, device=q.device)
    allowed = sparse_pattern(n, local, dilation, q.device) if dilation > 1 else (pos[:, None] >= pos[None, :])
    allowed = allowed & (key_valid[:, None, None, :] | torch.eye(n, dtype=torch.bool, device=q.device))
    bias = 0.0
    if bias_fn is not None:
        bias = bias_fn(times[:, :, None], times[:, None, :], pos[:, None] - pos[None, :]).unsqueeze(1)
    return dense_attention(q, k, v, allowed, bias)


def causal_blocked_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, mask_fn: MaskFn,
                             block: int | None = None) -> Tensor:
    """Causal attention in query blocks: block [a, b) reads keys [0, b) only, so bias, mask and scores cover
    about half of the L x L square (1/2 + 1/(2 * blocks)) and one block's are live at a time in inference.
    mask_fn(rows, allowed (B, b - a, b)) -> the additive logits (bias where allowed, MASKED elsewhere),
    broadcastable to (.., b - a, b) with q's leading dims. Equals causal_reference (tests).
    Default block: 16 on CPU (small blocks stay in cache: SparseCTR's A1 on a 512-wide ml1m batch trains about
    4x faster than one (L, L) pass, 1.3x faster than blocks of 64), 256 on GPUs (fewer kernel launches)."""
    n = q.shape[2]
    block = block or (16 if q.device.type == "cpu" else 256)
    pos = torch.arange(n, device=q.device)
    outs = []
    for a in range(0, n, block):
        b = min(n, a + block)
        pq, pk = pos[a:b, None], pos[None, :b]
        allowed = (pq >= pk) & (key_valid[:, None, :b] | (pq == pk))                  # a query sees itself
        outs.append(F.scaled_dot_product_attention(q[..., a:b, :], k[..., :b, :], v[..., :b, :],
                                                   attn_mask=mask_fn(slice(a, b), allowed)))
    return torch.cat(outs, -2)


def causal_attention(q, k, v, times: Tensor, key_valid: Tensor, bias_fn: BiasFn | None,
                     block: int | None = None) -> Tensor:
    """SUAN's causal self-attention (bias shared by the heads) through causal_blocked_attention."""
    pos = torch.arange(q.shape[2], device=q.device)

    def mask(rows: slice, allowed: Tensor) -> Tensor:
        if bias_fn is None:
            return torch.where(allowed, 0.0, MASKED).unsqueeze(1)
        cols = slice(0, rows.stop)
        bias = bias_fn(times[:, rows, None], times[:, None, cols], pos[rows, None] - pos[None, cols])
        return torch.where(allowed, bias, MASKED).unsqueeze(1)
    return causal_blocked_attention(q, k, v, key_valid, mask, block)


def local_dilated_attention(q, k, v, times: Tensor, key_valid: Tensor, bias_fn: BiasFn | None,
                            local: int, dilation: int) -> Tensor:
    """LightSUAN's sparse causal self-attention in O(L (local + L / dilation)) time and memory.

    Dilated keys ((i - j) % r == 0) are a reshape into r interleaved sub-sequences, each under full causal
    attention (one batched matmul of (L/r)^2 blocks); the local keys not already in that set (offsets
    1..local-1 that are not multiples of r) are shifted copies of K. One softmax spans both key sets (joint
    max and normaliser), each key counted once. No (L, L) tensor is built."""
    b, h, n, dh = q.shape
    r, scale = dilation, 1.0 / math.sqrt(dh)
    m = -(-n // r)  # ceil(n / r)
    pad = m * r - n

    def to_classes(x: Tensor, lead: int) -> Tensor:  # (*lead, n, *rest) -> (*lead, r, m, *rest): [c, a] = a*r + c
        x = F.pad(x, (0, 0) * (x.dim() - lead - 1) + (0, pad))
        return x.view(*x.shape[:lead], m, r, *x.shape[lead + 1:]).transpose(lead, lead + 1)

    qc, kc, vc = to_classes(q, 2), to_classes(k, 2), to_classes(v, 2)              # (B, H, r, m, Dh)
    tc = to_classes(times, 1)                                                      # (B, r, m)
    validc = to_classes(key_valid, 1)
    a = torch.arange(m, device=q.device)
    causal = a[:, None] >= a[None, :]
    allowed = causal & (validc[:, None, :, None, :] | torch.eye(m, dtype=torch.bool, device=q.device))
    s = (qc @ kc.transpose(-1, -2)) * scale                                        # (B, H, r, m, m)
    if bias_fn is not None:
        s = s + bias_fn(tc[..., :, None], tc[..., None, :], (a[:, None] - a[None, :]) * r).unsqueeze(1)
    s = s.masked_fill(~allowed, float("-inf"))

    offsets = [o for o in range(1, local) if o % r]
    if offsets:  # the local keys outside the dilated set, as O shifted copies of K, laid out by class too
        def shifted(x: Tensor, dim: int) -> Tensor:  # (..., n, *) -> (..., n, O, *): [i, o] = x[i - offsets[o]]
            moved = [F.pad(x, (0, 0) * (x.dim() - dim - 1) + (o, 0)).narrow(dim, 0, n) for o in offsets]
            return torch.stack(moved, dim + 1)

        ks, vs = to_classes(shifted(k, 2), 2), to_classes(shifted(v, 2), 2)       # (B, H, r, m, O, Dh)
        s_l = torch.einsum("bhrmd,bhrmod->bhrmo", qc, ks) * scale                 # (B, H, r, m, O)
        if bias_fn is not None:
            t_k = shifted(times, 1)                                                # (B, n, O)
            off = torch.tensor(offsets, device=q.device)
            s_l = s_l + to_classes(bias_fn(times[:, :, None], t_k, off), 1).unsqueeze(1)
        ok = shifted(key_valid, 1)
        s_l = s_l.masked_fill(~to_classes(ok, 1).unsqueeze(1), float("-inf"))
        # One fused softmax over both key sets (each key once): the joint max and normaliser come for free.
        w = torch.softmax(torch.cat([s, s_l], -1), -1)
        out = w[..., :m] @ vc + torch.einsum("bhrmo,bhrmod->bhrmd", w[..., m:], vs)
    else:
        out = torch.softmax(s, -1) @ vc
    return out.transpose(2, 3).reshape(b, h, m * r, dh)[:, :, :n]                  # back to positions




def causal_history_attention(q, k, v, times: Tensor, key_valid: Tensor, bias_fn: BiasFn | None, local: int = 0,
                             dilation: int = 1) -> Tensor:
    """The fast path of causal_reference: local + dilated when a window is set, else the blocked kernel."""
    if local > 0:
        return local_dilated_attention(q, k, v, times, key_valid, bias_fn, local, dilation)
    return causal_attention(q, k, v, times, key_valid, bias_fn)


def candidate_keys(n: int, local: int, dilation: int, device=None) -> Tensor:
    """History positions a candidate at virtual position n sees under the pattern (all of them when r = 1:
    then without nonzero(), whose data-dependent size AOTInductor cannot compile)."""
    if dilation == 1:
        return torch.arange(n, device=device)
    d = n - torch.arange(n, device=device)
    return torch.nonzero((d < local) | (d % dilation == 0)).squeeze(1)


def candidate_attention(qc: Tensor, kc: Tensor, vc: Tensor, kh: Tensor, vh: Tensor, t_cand: Tensor,
                        t_hist: Tensor, hist_valid: Tensor, bias_fn: BiasFn | None, local: int = 0,
                        dilation: int = 1) -> Tensor:
    """C candidates (B, H, C, Dh), each at the position right after the history, attend to the history keys of
    the pattern and to themselves, never to each other. kh, vh: (B, H, L, Dh) cached from the history."""
    n, dh = kh.shape[2], qc.shape[-1]
    scale = 1.0 / math.sqrt(dh)
    idx = candidate_keys(n, local, dilation, kh.device)
    kj, vj = kh.index_select(2, idx), vh.index_select(2, idx)                      # (B, H, J, Dh)
    s_h = (qc @ kj.transpose(-1, -2)) * scale                                      # (B, H, C, J)
    s_self = (qc * kc).sum(-1, keepdim=True) * scale                               # (B, H, C, 1)
    if bias_fn is not None:
        tj = t_hist.index_select(1, idx)                                           # (B, J)
        s_h = s_h + bias_fn(t_cand[:, None, None], tj[:, None, :], (n - idx)[None, None, :]).unsqueeze(1)
        zero = torch.zeros(1, dtype=torch.long, device=qc.device)
        s_self = s_self + bias_fn(t_cand[:, None, None], t_cand[:, None, None], zero).unsqueeze(1)
    s_h = s_h.masked_fill(~hist_valid.index_select(1, idx)[:, None, None, :], float("-inf"))
    w = torch.softmax(torch.cat([s_h, s_self], -1), -1)
    return w[..., :-1] @ vj + w[..., -1:] * vc


def candidate_bias(bias_fn: BiasFn, t_cand: Tensor, t_hist: Tensor) -> Tensor:
    """(B, L + 1) bias of a candidate (at position L, request time t_cand (B,)) to [history ; itself]."""
    n = t_hist.shape[1]
    gap = n - torch.arange(n + 1, device=t_hist.device)
    return bias_fn(t_cand[:, None], torch.cat([t_hist, t_cand[:, None]], 1), gap[None, :])


def candidate_reference(qc: Tensor, kc: Tensor, vc: Tensor, kh: Tensor, vh: Tensor, t_cand: Tensor,
                        t_hist: Tensor, hist_valid: Tensor, bias_fn: BiasFn | None, local: int = 0,
                        dilation: int = 1) -> Tensor:
    """Dense version of candidate_attention: each candidate is the query at position L of [history ; itself]."""
    n = kh.shape[2]
    gap = n - torch.arange(n + 1, device=qc.device)                                         # self: gap 0
    seen = (gap < local) | (gap % dilation == 0)
    allowed = seen & torch.cat([hist_valid, hist_valid.new_ones(len(hist_valid), 1)], 1)    # (B, L + 1)
    bias = 0.0 if bias_fn is None else candidate_bias(bias_fn, t_cand, t_hist)[:, None, None, None, :]
    out = dense_attention(qc.unsqueeze(3), with_own_key(kh, kc), with_own_key(vh, vc),
                          allowed[:, None, None, None, :], bias)
    return out.squeeze(3)
