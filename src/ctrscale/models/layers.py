"""Layers shared by the models: MLPs, norms, feed-forward networks, masked pooling, per-token maps (attention:
attention/, embedding tables: tables.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import DataSpec


def require_history(spec: DataSpec, model: str) -> None:
    if not spec.hist:
        raise ValueError(f"{model} needs a behavior sequence in the data")


class Dice(nn.Module):
    """DIN's data-adaptive activation: p = sigmoid(BN(x)); y = p * x + (1 - p) * alpha * x.

    With `mask` (x's leading dims), the batch statistics (and the running ones) come from the valid rows only, so
    padded behaviors never move a real one's output; masked rows get zeros (every caller masks them anyway)."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def _dice(self, x: Tensor) -> Tensor:  # (N, D); p x + (1 - p) alpha x in fewer passes
        return x * (self.alpha + torch.sigmoid(self.bn(x)) * (1 - self.alpha))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return self._dice(x.reshape(-1, x.shape[-1])).view_as(x)
        out = x.new_zeros(x.shape)
        out[mask] = self._dice(x[mask])
        return out


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "dice": Dice, "prelu": nn.PReLU,
                                           "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}


def activation_layer(name: str, width: int) -> nn.Module:
    """An activation by name (ACTIVATIONS); Dice learns per unit of `width`, PReLU one slope (FuxiCTR's)."""
    return Dice(width) if ACTIVATIONS[name] is Dice else ACTIVATIONS[name]()


class MLP(nn.Sequential):
    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int | None = 1, dropout: float = 0.0,
                 activation: str = "relu"):
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(d_in, h), activation_layer(activation, h)] + ([nn.Dropout(dropout)] if dropout
                                                                               else [])
            d_in = h
        if d_out is not None:
            layers.append(nn.Linear(d_in, d_out))
        super().__init__(*layers)

    def masked(self, x: Tensor, mask: Tensor, start: int = 0) -> Tensor:
        """The layers from `start` on, over x (..., d) whose leading dims `mask` marks valid: Dice normalises with
        the valid rows' statistics only; every other layer is row-wise and runs as usual."""
        for layer in list(self)[start:]:
            x = layer(x, mask) if isinstance(layer, Dice) else layer(x)
        return x


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean over `dim` of x where mask is True; zeros (never NaN) where nothing is valid."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"norm must be 'rms' or 'layer', got {kind!r}")


class SwiGLU(nn.Module):
    """(SiLU(x W1) * x W2) W3, hidden width `mult` * dim."""

    def __init__(self, dim: int, mult: int = 3):
        super().__init__()
        self.w1 = nn.Linear(dim, mult * dim, bias=False)
        self.w2 = nn.Linear(dim, mult * dim, bias=False)
        self.w3 = nn.Linear(mult * dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class ReluFFN(nn.Sequential):
    def __init__(self, dim: int, mult: int = 3):
        super().__init__(nn.Linear(dim, mult * dim), nn.ReLU(), nn.Linear(mult * dim, dim))


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
        return self.w3(F.silu(a) * b)
