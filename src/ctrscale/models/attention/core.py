"""The pieces every attention kernel shares: head split/merge, the masked softmax, the dense reference."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# logits of disallowed keys: exp() underflows to 0 and no inf - inf appears
MASKED = torch.finfo(torch.float32).min / 2


def split_heads(x: Tensor, heads: int, dim: int = 1) -> Tensor:
    """(B, N, H * Dh) -> heads moved to `dim`: dim=1 gives (B, H, N, Dh), dim=0 (H, B, N, Dh), dim=-2 (B, N, H, Dh)."""
    return x.unflatten(-1, (heads, -1)).movedim(-2, dim)


def merge_heads(x: Tensor, dim: int = 1) -> Tensor:
    """The inverse of split_heads(x, heads, dim): (.., H at dim, .., N, Dh) -> (.., N, H * Dh)."""
    return x.movedim(dim, -2).flatten(-2)


def masked_softmax(scores: Tensor, allowed: Tensor, dim: int = -1) -> Tensor:
    """Softmax over the allowed positions; a row with none allowed gets all-zero weights (finite gradients too)."""
    return torch.softmax(scores.masked_fill(~allowed, MASKED), dim) * allowed


def attention_weights(q: Tensor, k: Tensor, allowed: Tensor | None = None, bias: Tensor | float = 0.0,
                      scale: float | None = None) -> Tensor:
    """softmax over allowed keys of q.k * scale + bias (scale defaults to 1 / sqrt(Dh)); any batch layout, allowed
    and bias broadcast to the scores (.., Lq, Lk)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale + bias
    return torch.softmax(s, -1) if allowed is None else masked_softmax(s, allowed)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None, bias: Tensor | float = 0.0,
                    scale: float | None = None) -> Tensor:
    """The reference every kernel is held to: attention_weights @ v; rows with no allowed key give zeros."""
    return attention_weights(q, k, allowed, bias, scale) @ v


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None, bias: Tensor | float = 0.0,
                   scale: float | None = None) -> Tensor:
    """dense_attention through torch's fused scaled_dot_product_attention (q, k, v (B, H, L, Dh)). A row with no
    allowed key is let see every key, then zeroed: SDPA's output for an all-masked row is not specified."""
    if allowed is None:
        mask = bias if isinstance(bias, Tensor) else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    any_allowed = allowed.any(-1, keepdim=True)
    allowed = allowed | ~any_allowed
    mask = allowed if not isinstance(bias, Tensor) else torch.where(allowed, bias, MASKED)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale) * any_allowed


def with_own_key(hist: Tensor, own: Tensor) -> Tensor:
    """Each candidate's key (or value) set [history ; itself]: hist (B, H, L, Dh), own (B, H, C, Dh) ->
    (B, H, C, L + 1, Dh), the dense layout the candidate references attend over."""
    b, h, n, dh = hist.shape
    return torch.cat([hist.unsqueeze(2).expand(b, h, own.shape[2], n, dh), own.unsqueeze(3)], 3)
