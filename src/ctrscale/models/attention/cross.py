"""EST's lightweight cross-attention (LCA): C candidates' N tokens over [R_u ; R_c], R_u cached once per request."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .core import dense_attention


def lca(q: Tensor, k_u: Tensor, v_u: Tensor, mask_u: Tensor, k_c: Tensor, v_c: Tensor, mask_c: Tensor) -> Tensor:
    """Cross-attention of C candidates' N tokens over [R_u ; R_c], one softmax over both key sets.
    q (R, C, n, H, e); k_u, v_u (R, Lu, H, e) shared by the C candidates (never copied per candidate);
    k_c, v_c (R, C, K, H, e); masks (R, Lu), (R, C, K) -> (R, C, n, H, e). Rows with no valid key give 0.
    The two score blocks are never concatenated: a joint max and normaliser, in place (the score tensors are
    the big ones when many candidates share a long R_u)."""
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    s_u = torch.einsum("rcnhe,rlhe->rchnl", q, k_u).masked_fill_(~mask_u[:, None, None, None, :], float("-inf"))
    s_c = torch.einsum("rcnhe,rckhe->rchnk", q, k_c).masked_fill_(~mask_c[:, :, None, None, :], float("-inf"))
    with torch.no_grad():  # any constant per row gives the same softmax; finite even for rows with no key
        m = torch.maximum(s_u.amax(-1, keepdim=True), s_c.amax(-1, keepdim=True)).clamp_min_(-1e30)
    p_u, p_c = s_u.sub_(m).exp_(), s_c.sub_(m).exp_()
    z = (p_u.sum(-1) + p_c.sum(-1)).clamp_min(1e-30).transpose(-1, -2).unsqueeze(-1)          # (R, C, n, H, 1)
    return (torch.einsum("rchnl,rlhe->rcnhe", p_u, v_u) + torch.einsum("rchnk,rckhe->rcnhe", p_c, v_c)) / z


def lca_reference(q: Tensor, k_u: Tensor, v_u: Tensor, mask_u: Tensor, k_c: Tensor, v_c: Tensor,
                  mask_c: Tensor) -> Tensor:
    """lca over the concatenated keys [R_u ; R_c] of every candidate, R_u copied per candidate."""
    r, c = q.shape[:2]
    heads_first = lambda t: t.movedim(-2, -3)  # noqa: E731  (.., L, H, e) -> (.., H, L, e)
    keys = lambda u, own: torch.cat([u.unsqueeze(1).expand(r, c, *u.shape[1:]), own], 2)  # noqa: E731
    allowed = torch.cat([mask_u.unsqueeze(1).expand(r, c, -1), mask_c], 2)[:, :, None, None, :]
    out = dense_attention(heads_first(q), heads_first(keys(k_u, k_c)),
                          heads_first(keys(v_u, v_c)), allowed)                  # (R, C, H, n, e)
    return out.movedim(-3, -2)
