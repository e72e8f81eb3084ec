"""SparseCTR's EvoAttention branches (shared/spec/sparsectr.md), each with a dense masked reference beside it.

Every branch is built from dense blocks, never from per-query gathers (benchmarks.md: those are 10x slower than
full attention on CPU) and never from an (L, L) tensor:
- global and transition keys are sets shared by all queries of one user (|P| chunk summaries, m|P| transition
  behaviors): one (L, K) matmul per user and head;
- the local window is w shifted copies of the keys (views): query i scores keys i, i-1, .., i-w+1 elementwise.

Speed on CPU (measured on ml1m batches of ~450 requests x 512 behaviors, 8 heads of width 4) comes from layout:
- heads first: q/k/v are (H, R, L, Dh), so a bias gathered from a (H, codes) table lands contiguous;
- the relative bias of a (query, key) pair depends on a small integer code (RelTemporal: log2 gap x hour gap x
  weekend mismatch), so a branch computes the codes once and gathers its (H, ..) bias and mask in one lookup
  from a table built from the slopes (bias.RelativeEncoding.bias_mask);
- the local window's scores are (H, w + 1, R, L): the softmax runs over a leading dim, vectorised across L.

Conventions: histories are right-aligned (padding first, hist_time == 0 marks it), positions are 0..L-1,
candidates sit at position L with the request time. A query with no allowed key in a branch gets a zero output
for that branch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .bias import RelativeEncoding
from .causal import causal_blocked_attention
from .core import MASKED, dense_attention


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


def shared_key_reference(q: Tensor, k: Tensor, v: Tensor, bias_mask: Tensor, any_allowed: Tensor) -> Tensor:
    """shared_key_attention as a masked softmax: the allowed keys are those whose logit is not MASKED."""
    allowed = bias_mask > MASKED
    return dense_attention(q, k, v, allowed, bias_mask.masked_fill(~allowed, 0.0))


def local_window_reference(q, k, v, times, valid, w, enc, ku=None, vu=None) -> Tensor:
    """Dense (L, L [+ 1]) version of local_window_attention, heads first, bias from enc.forward."""
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
    return dense_attention(q, k, v, allowed, bias)




def causal_full_reference(q: Tensor, k: Tensor, v: Tensor, times: Tensor, valid: Tensor, enc: RelativeEncoding,
                          block: int | None = None) -> Tensor:
    """Dense (L, L) version of causal_full_attention, bias from enc.forward."""
    n = q.shape[2]
    pos = torch.arange(n, device=q.device)
    allowed = (pos[:, None] >= pos[None, :]) & (valid[:, None, :] | torch.eye(n, dtype=torch.bool, device=q.device))
    bias = enc(times[:, :, None], times[:, None, :], pos[:, None].float(), pos[None, :].float())
    return dense_attention(q, k, v, allowed, 0.0 if bias is None else bias.transpose(0, 1))


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """Kernelized attention (phi = elu + 1) over behaviors up to and including the query, by prefix sums:
    O(L Dh^2). q/k/v (H, R, L, Dh), valid (R, L). No relative encoding can enter it (the paper's point)."""
    phi_q, phi_k = F.elu(q) + 1, (F.elu(k) + 1) * valid.unsqueeze(-1)
    kv = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), 2)                      # (H, R, L, Dh, Dh)
    z = torch.cumsum(phi_k, 2)
    num = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)
    return num / (phi_q * z).sum(-1, keepdim=True).clamp_min(1e-6)


def causal_linear_reference(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """causal_linear_attention through the (L, L) matrix of phi(q) . phi(k) over the allowed keys."""
    n = q.shape[2]
    allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril() & valid[:, None, :]   # (R, L, L)
    w = ((F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)) * allowed
    return (w @ v) / w.sum(-1, keepdim=True).clamp_min(1e-6)
