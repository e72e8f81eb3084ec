"""Layers shared by the models: MLPs, masked pooling, target attention (embedding tables: tables.py)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..batch import DataSpec


def require_history(spec: DataSpec, model: str) -> None:
    if not spec.hist:
        raise ValueError(f"{model} needs a behavior sequence in the data")


class Dice(nn.Module):
    """DIN's data-adaptive activation: p = sigmoid(BN(x)); y = p * x + (1 - p) * alpha * x."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        p = torch.sigmoid(self.bn(x.reshape(-1, x.shape[-1])).view_as(x))
        return p * x + (1 - p) * self.alpha * x


class MLP(nn.Sequential):
    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int | None = 1, dropout: float = 0.0,
                 activation: type[nn.Module] = nn.ReLU):
        layers: list[nn.Module] = []
        for h in hidden:
            act = activation(h) if activation is Dice else activation()
            layers += [nn.Linear(d_in, h), act] + ([nn.Dropout(dropout)] if dropout else [])
            d_in = h
        if d_out is not None:
            layers.append(nn.Linear(d_in, d_out))
        super().__init__(*layers)


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean over `dim` of x where mask is True; zeros (never NaN) where nothing is valid."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over valid positions; all-masked rows give all-zero weights instead of NaN."""
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim)
    return torch.nan_to_num(w, nan=0.0)


class TargetAttention(nn.Module):
    """DIN's local activation unit: weight each behavior by an MLP of [q, k, q - k, q * k] and sum.
    Weights are not normalised by default (the DIN paper keeps the intensity of interest); softmax optional.

    The fast path never builds the (B, L, 4D) concatenation: the first layer W [q, k, q-k, q*k] equals
    (W_q + W_d) q + (W_k - W_d + diag(q) W_p) k, one per-sample (D, H) matrix applied to the keys, a quarter
    of the reference's multiply-adds. `reference()` keeps the literal form; a test holds them equal."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (80, 40), softmax: bool = False):
        super().__init__()
        self.mlp = MLP(4 * dim, hidden, 1)
        self.softmax, self.dim = softmax, dim

    def _pool(self, w: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        w = masked_softmax(w, mask) if self.softmax else w * mask
        return torch.einsum("bl,bld->bd", w, keys)

    def reference(self, q: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        qe = q.unsqueeze(1).expand_as(keys)
        w = self.mlp(torch.cat([qe, keys, qe - keys, qe * keys], -1)).squeeze(-1)  # (B, L)
        return self._pool(w, keys, mask)

    def forward(self, q: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        # q (B, D), keys (B, L, D), mask (B, L) -> (B, D)
        first = self.mlp[0]
        wq, wk, wd, wp = first.weight.split(self.dim, dim=1)             # each (H, D)
        per_sample = (wk - wd).t() + q.unsqueeze(-1) * wp.t()              # (B, D, H)
        h = torch.bmm(keys, per_sample) + (q @ (wq + wd).t() + first.bias).unsqueeze(1)  # (B, L, H)
        for layer in list(self.mlp)[1:]:
            h = layer(h)
        w = h.squeeze(-1)                                                  # (B, L)
        return self._pool(w, keys, mask)


class TokenLinear(nn.Module):
    """n independent linear maps, one per token position (token-specific parameters of EST, HiFormer, OneTrans):
    (..., n, d_in) -> (..., n, d_out) in one batched einsum."""

    def __init__(self, n: int, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, d_in, d_out) / d_in ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n, d_out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("...ni,nio->...no", x, self.weight)
        return y + self.bias if self.bias is not None else y


class TokenSwiGLU(nn.Module):
    """A SwiGLU feed-forward network of its own for each of n tokens (EST's PerToken-FFN)."""

    def __init__(self, n: int, dim: int, mult: int = 2):
        super().__init__()
        self.w12 = TokenLinear(n, dim, 2 * mult * dim, bias=False)
        self.w3 = TokenLinear(n, mult * dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, -1)
        return self.w3(nn.functional.silu(a) * b)
