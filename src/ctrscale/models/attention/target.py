"""DIN's target attention: weight each behavior by an MLP of [q, k, q - k, q * k] and sum."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import MLP
from .core import masked_softmax


class TargetAttention(nn.Module):
    """DIN's local activation unit. Weights are not normalised by default (the DIN paper keeps the intensity of
    interest); softmax optional. q (B, D), keys (B, L, D), mask (B, L) -> (B, D).

    The fast path never builds the (B, L, 4D) concatenation: the first layer W [q, k, q-k, q*k] equals
    (W_q + W_d) q + (W_k - W_d + diag(q) W_p) k, one per-sample (D, H) matrix applied to the keys, a quarter
    of the reference's multiply-adds. `reference` keeps the literal form; which one runs is the dispatch's."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (80, 40), softmax: bool = False,
                 activation: str = "relu"):
        super().__init__()
        self.mlp = MLP(4 * dim, hidden, 1, activation=activation)  # Dice normalises over the valid behaviors
        self.softmax, self.dim = softmax, dim

    def _pool(self, w: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        w = masked_softmax(w, mask) if self.softmax else w * mask
        return torch.einsum("bl,bld->bd", w, keys)

    def reference(self, q: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        qe = q.unsqueeze(1).expand_as(keys)
        w = self.mlp.masked(torch.cat([qe, keys, qe - keys, qe * keys], -1), mask).squeeze(-1)  # (B, L)
        return self._pool(w, keys, mask)

    def fast(self, q: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        first = self.mlp[0]
        wq, wk, wd, wp = first.weight.split(self.dim, dim=1)             # each (H, D)
        per_sample = (wk - wd).t() + q.unsqueeze(-1) * wp.t()              # (B, D, H)
        h = torch.bmm(keys, per_sample) + (q @ (wq + wd).t() + first.bias).unsqueeze(1)  # (B, L, H)
        return self._pool(self.mlp.masked(h, mask, start=1).squeeze(-1), keys, mask)

    def forward(self, q: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        from .dispatch import attention_function  # the table lists this class's two paths
        return attention_function("target")(self, q, keys, mask)
