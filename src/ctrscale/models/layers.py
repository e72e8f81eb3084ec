"""Layers shared by the models: feature embeddings, MLPs, masked pooling, target attention."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.dataset import DataSpec


def require_history(spec: DataSpec, model: str) -> None:
    if not spec.hist:
        raise ValueError(f"{model} needs a behavior sequence in the data")


class FeatureEmbedding(nn.Module):
    """One embedding table per vocabulary (a behavior field shares its item field's table), and a per-field
    affine map for numeric fields, all of width `dim`. Id 0 (padding) embeds to zeros."""

    def __init__(self, spec: DataSpec, dim: int, init_std: float = 0.01):
        super().__init__()
        self.spec, self.dim = spec, dim
        used = {spec.field_vocab[f] for f in spec.sparse} | {spec.field_vocab[f"hist.{h}"] for h in spec.hist}
        self.tables = nn.ModuleDict({_key(v): nn.Embedding(spec.vocab_sizes[v], dim, padding_idx=0)
                                     for v in sorted(used)})
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=init_std)
            with torch.no_grad():
                t.weight[0].zero_()
        self._sparse_tables = [_key(spec.field_vocab[f]) for f in spec.sparse]
        self._hist_tables = [_key(spec.field_vocab[f"hist.{h}"]) for h in spec.hist]
        self.num_weight = nn.Parameter(torch.randn(len(spec.dense), dim) * init_std)
        self.num_bias = nn.Parameter(torch.zeros(len(spec.dense), dim))
        align = spec.hist_to_sparse
        self.register_buffer("_align", torch.tensor([max(a, 0) for a in align], dtype=torch.long), persistent=False)
        self.register_buffer("_align_ok", torch.tensor([a >= 0 for a in align]), persistent=False)

    def sparse(self, ids: Tensor, fields: list[int] | None = None) -> Tensor:
        """(..., F_sparse) -> (..., F_sparse, d); with `fields`, only those columns, in that order."""
        fields = range(len(self._sparse_tables)) if fields is None else fields
        return torch.stack([self.tables[self._sparse_tables[i]](ids[..., i]) for i in fields], -2)

    def numeric(self, x: Tensor) -> Tensor:  # (B, F_dense) -> (B, F_dense, d)
        return x.unsqueeze(-1) * self.num_weight + self.num_bias

    def hist(self, ids: Tensor) -> Tensor:  # (B, L, F_hist) -> (B, L, F_hist, d)
        return torch.stack([self.tables[t](ids[..., j]) for j, t in enumerate(self._hist_tables)], -2)

    def candidate_as_behavior(self, sparse_ids: Tensor) -> Tensor:
        """The candidate in the behavior field slots: (B, F_sparse) -> (B, F_hist, d). A behavior field with
        no candidate counterpart (a rating, an action) gets zeros."""
        ids = sparse_ids[..., self._align] * self._align_ok
        return self.hist(ids)

    # The split the sequence models use: profile tokens (user fields) kept apart, the candidate's and the
    # context's fields and the numerics flattened for the head.
    def profile(self, sparse_ids: Tensor) -> Tensor:  # (..., F_sparse) -> (..., n_user, d)
        return self.sparse(sparse_ids, self.spec.sparse_of_role("user"))

    def other_flat(self, sparse_ids: Tensor, dense: Tensor) -> Tensor:  # -> (..., (n_item + n_ctx + F_dense) * d)
        return torch.cat([self.sparse(sparse_ids, self.spec.sparse_of_role("item", "context")).flatten(-2),
                          self.numeric(dense).flatten(-2)], -1)

    @property
    def side_width(self) -> int:
        """Width of [flattened profile, other_flat]: what a sequence model's head gets beside the sequence."""
        return self.out_flat

    @property
    def out_flat(self) -> int:
        """Width of [flattened sparse, flattened numeric] embeddings."""
        return (len(self.spec.sparse) + len(self.spec.dense)) * self.dim

    def flat(self, sparse_ids: Tensor, dense: Tensor) -> Tensor:
        return torch.cat([self.sparse(sparse_ids).flatten(-2), self.numeric(dense).flatten(-2)], -1)


def _key(vocab: str) -> str:
    return vocab.replace(".", "__")  # ModuleDict keys cannot contain dots


def is_embedding_param(name: str) -> bool:
    """Parameters that belong to embedding tables (the "sparse" parameters of the seeds)."""
    return ".tables." in f".{name}" or name.startswith("tables.")


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
