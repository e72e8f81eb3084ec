"""Embedding tables: the "sparse" parameters of the seeds, found by type wherever they sit in a model.

An `EmbeddingTable` (or any module marked `Table`, such as train.sharding's row-sharded table) holds one
vocabulary's rows. The optimizer gives tables their own learning rate and weight decay, accounting counts them
apart from the dense parameters, sparse reset snapshots them and row sharding spreads them over ranks: all of
them find tables with `tables_of` / `embedding_params`, never by a parameter's name.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..batch import DataSpec


class Table:
    """Marks a module whose `weight` rows are embeddings of ids (num_embeddings x embedding_dim, whole-table)."""
    num_embeddings: int
    embedding_dim: int


class EmbeddingTable(nn.Embedding, Table):
    """nn.Embedding that the optimizer, accounting and sharding treat as an embedding table."""


EMBEDDING_INITS = ("model", "normal", "xavier_normal", "xavier_uniform")


def init_tables(module: nn.Module, how: str, std: float = 1e-4) -> int:
    """Draw every table's rows again (how: normal N(0, std), or xavier over the table's shape); "model" keeps each
    model's own initialisation. Padding rows stay zero. Returns the number of tables drawn."""
    if how == "model":
        return 0
    tables = tables_of(module)
    for _, t in tables:
        with torch.no_grad():
            if how == "normal":
                nn.init.normal_(t.weight, std=std)
            else:
                getattr(nn.init, f"{how}_")(t.weight)
            if getattr(t, "padding_idx", None) is not None:
                t.weight[t.padding_idx].zero_()
    return len(tables)


def tables_of(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every table in `module`."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, Table)]


def embedding_params(module: nn.Module) -> dict[str, nn.Parameter]:
    """The tables' parameters by name; every other parameter is dense."""
    found = {id(m.weight) for _, m in tables_of(module)}
    return {n: p for n, p in module.named_parameters() if id(p) in found}


class FeatureEmbedding(nn.Module):
    """One embedding table per vocabulary (a behavior field shares its item field's table), and a per-field
    affine map for numeric fields, all of width `dim`. Id 0 (padding) embeds to zeros."""

    def __init__(self, spec: DataSpec, dim: int, init_std: float = 0.01):
        super().__init__()
        self.spec, self.dim = spec, dim
        used = {spec.field_vocab[f] for f in spec.sparse} | {spec.field_vocab[f"hist.{h}"] for h in spec.hist}
        self.tables = nn.ModuleDict({_key(v): EmbeddingTable(spec.vocab_sizes[v], dim, padding_idx=0)
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


