"""HSTU's pointwise aggregated attention: SiLU-weighted (not softmax) sums normalised by the number of allowed
keys, over the history (causal) and for candidates over the cached history and themselves."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .bias import BiasFn
from .causal import candidate_bias
from .core import with_own_key


def pointwise_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | float) -> Tensor:
    """SiLU-weighted (not softmax) aggregation, normalised by the number of allowed keys per query."""
    w = F.silu(q @ k.transpose(-1, -2) + bias) * allowed
    return (w @ v) / allowed.sum(-1, keepdim=True).clamp_min(1)


def pointwise_candidates(qc: Tensor, kc: Tensor, vc: Tensor, kh: Tensor, vh: Tensor, t_cand: Tensor,
                         t_hist: Tensor, hist_valid: Tensor, bias_fn: BiasFn) -> Tensor:
    """C candidates (B, H, C, Dh) against the cached history kh, vh (B, H, L, Dh) and themselves, never each
    other: the history block is one matmul shared by the candidates, the own key an elementwise product."""
    n = kh.shape[2]
    b_h = bias_fn(t_cand[:, None], t_hist, (n - torch.arange(n, device=kh.device))[None, :])[:, None, None, :]
    b_s = bias_fn(t_cand[:, None], t_cand[:, None], torch.zeros(1, dtype=torch.long, device=kh.device))
    w_h = F.silu(qc @ kh.transpose(-1, -2) + b_h) * hist_valid[:, None, None, :]             # (B, H, C, L)
    w_s = F.silu((qc * kc).sum(-1, keepdim=True) + b_s[:, None, None, :])                    # (B, H, C, 1)
    return (w_h @ vh + w_s * vc) / hist_valid.sum(-1).add(1).view(-1, 1, 1, 1)


def pointwise_candidates_reference(qc: Tensor, kc: Tensor, vc: Tensor, kh: Tensor, vh: Tensor, t_cand: Tensor,
                                   t_hist: Tensor, hist_valid: Tensor, bias_fn: BiasFn) -> Tensor:
    """pointwise_candidates over the dense [history ; itself] key set of every candidate."""
    allowed = torch.cat([hist_valid, hist_valid.new_ones(len(hist_valid), 1)], 1)[:, None, None, None, :]
    bias = candidate_bias(bias_fn, t_cand, t_hist)[:, None, None, None, :]
    return pointwise_attention(qc.unsqueeze(3), with_own_key(kh, kc), with_own_key(vh, vc), allowed,
                               bias).squeeze(3)
