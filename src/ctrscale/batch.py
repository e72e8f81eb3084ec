"""What every model consumes: the data's feature spec, typed batches, and what a model declares it needs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import ConfigError


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data: field names, roles, vocabularies and their sizes."""
    sparse: tuple[str, ...]
    dense: tuple[str, ...]
    hist: tuple[str, ...]
    roles: dict[str, str]
    field_vocab: dict[str, str]
    vocab_sizes: dict[str, int]
    max_len: int = 50
    content_dim: int = 0
    content_key: str | None = None  # the sparse field whose ids index the content table
    name: str = ""
    # Train percentiles (0, 1, ..., 100) of each standardised numeric field: models that bucket numerics read
    # their quantile edges here. Empty when unknown (a model then assumes standard-normal quantiles).
    dense_percentiles: dict[str, list[float]] = field(default_factory=dict)

    def sparse_of_role(self, *roles: str) -> list[int]:
        return [i for i, f in enumerate(self.sparse) if self.roles[f] in roles]

    @property
    def hist_to_sparse(self) -> list[int]:
        """For each behavior field, the item-role sparse field sharing its vocabulary (-1 when none).
        This aligns a candidate with the behaviors: target attention and target-aware sequences need it."""
        out = []
        for h in self.hist:
            match = [i for i, f in enumerate(self.sparse)
                     if self.roles[f] == "item" and self.field_vocab[f] == self.field_vocab[f"hist.{h}"]]
            out.append(match[0] if match else -1)
        return out

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class CandidateSequence:
    length: int = 20         # K_c
    by: str = "content"      # "content" (top cosine to the candidate), a behavior field name (same value), or
                             # "category" (the coarsest behavior field a candidate field shares: gsu.category_field)
    source_len: int = 0      # search the most recent this-many behaviors; 0 = the whole history

    def __post_init__(self):
        if self.length < 1:
            raise ConfigError(f"candidate sequence length must be >= 1, got {self.length}")
        if self.source_len < 0:
            raise ConfigError(f"candidate sequence source_len must be >= 0, got {self.source_len}")


@dataclass(frozen=True)
class DataNeeds:
    """What a model reads beyond the plain impression, derived from its config (`CTRModel.needs`): the registry,
    the recipe, the loaders, accounting and serving read this one declaration."""
    listwise: bool = False    # trains on whole requests by default (data.listwise overrides)
    content: bool = False     # reads the dataset's frozen item content table (a buffer of the built model)
    cand_seq: CandidateSequence | None = None  # reads each candidate's behaviors R_c, picked by this GSU setting


def _to(obj, device, non_blocking=False):
    return type(obj)(**{f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
                        for f in dataclasses.fields(obj) for v in [getattr(obj, f.name)]})


@dataclass
class Batch:
    """B impressions. Histories are right-aligned: the most recent behavior sits at position L-1."""
    sparse: Tensor     # (B, F_sparse) int64 ids of the categorical non-behavioral fields (0 pad, 1 OOV)
    dense: Tensor      # (B, F_dense) float32 numeric fields
    hist: Tensor       # (B, L, F_hist) int64 behavior ids
    hist_time: Tensor  # (B, L) int64 unix seconds; 0 marks padding
    time: Tensor       # (B,) int64 unix seconds of the impression (the request time)
    label: Tensor      # (B,) float32 0/1
    user: Tensor       # (B,) int64 user key (GAUC groups)
    request: Tensor    # (B,) int64 request key
    # Candidate-specific behaviors R_c (the GSU's pick from the long history), when the model asks for them
    cand_hist: Tensor | None = None       # (B, K, F_hist) int64
    cand_hist_time: Tensor | None = None  # (B, K) int64 unix seconds; 0 marks padding

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return _to(self, device, non_blocking)

    def __len__(self) -> int:
        return self.label.shape[0]

    @property
    def hist_mask(self) -> Tensor:  # (B, L) True where a behavior is real
        return self.hist_time > 0

    @property
    def cand_hist_mask(self) -> Tensor:  # (B, K) True where a candidate-specific behavior is real
        return self.cand_hist_time > 0

    def select(self, idx: Tensor) -> "Batch":
        return Batch(**{f.name: None if v is None else v[idx]
                        for f in dataclasses.fields(self) for v in [getattr(self, f.name)]})

    def with_max_len(self, max_len: int) -> "Batch":
        """Keep the `max_len` most recent behaviors (right-aligned, so a slice from the right)."""
        return dataclasses.replace(self, hist=self.hist[:, -max_len:], hist_time=self.hist_time[:, -max_len:])


@dataclass
class RequestBatch:
    """R requests of up to C candidates each: one user at one moment and the impressions shown to them.

    `context` holds one row per request (its user and context fields, history and time); the candidates carry
    their full rows, so a model that does not reuse user-side work can score them as plain impressions."""
    context: Batch         # (R, ...) one representative impression per request
    cand_sparse: Tensor    # (R, C, F_sparse)
    cand_dense: Tensor     # (R, C, F_dense)
    label: Tensor          # (R, C) float32
    mask: Tensor           # (R, C) bool: real candidate slots
    cand_hist: Tensor | None = None       # (R, C, K, F_hist) each candidate's own behaviors R_c, when loaded
    cand_hist_time: Tensor | None = None  # (R, C, K)

    PER_CANDIDATE = ("cand_sparse", "cand_dense", "label", "mask", "cand_hist", "cand_hist_time")

    def to(self, device, non_blocking: bool = False) -> "RequestBatch":
        return RequestBatch(context=self.context.to(device, non_blocking),
                            **{k: None if v is None else v.to(device, non_blocking=non_blocking)
                               for k in self.PER_CANDIDATE for v in [getattr(self, k)]})

    def __len__(self) -> int:  # real impressions
        return int(self.mask.sum())

    def select(self, idx: Tensor) -> "RequestBatch":  # a subset of the requests
        per_candidate = {k: None if v is None else v[idx] for k in self.PER_CANDIDATE for v in [getattr(self, k)]}
        return RequestBatch(context=self.context.select(idx), **per_candidate)

    @property
    def num_candidates(self) -> int:
        return self.mask.shape[1]

    @classmethod
    def from_batch(cls, batch: Batch) -> "RequestBatch":
        """Group a flat batch's impressions by request key (vectorised). Rows of one request must share
        the user, time and history, as they do by construction of a request."""
        req, inverse, counts = torch.unique(batch.request, return_inverse=True, return_counts=True)
        r, c = len(req), int(counts.max())
        order = torch.argsort(inverse, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(batch), device=order.device) - starts[inverse[order]]
        rows, slots = inverse[order], slot

        def per_slot(x: Tensor | None) -> Tensor | None:  # (B, ...) rows -> (R, C, ...) slots, zeros in the gaps
            if x is None:
                return None
            out = x.new_zeros(r, c, *x.shape[1:])
            out[rows, slots] = x[order]
            return out
        mask = per_slot(torch.ones_like(batch.label, dtype=torch.bool))
        context = dataclasses.replace(batch.select(order[starts]), cand_hist=None, cand_hist_time=None)
        return cls(context=context, cand_sparse=per_slot(batch.sparse), cand_dense=per_slot(batch.dense),
                   label=per_slot(batch.label), mask=mask, cand_hist=per_slot(batch.cand_hist),
                   cand_hist_time=per_slot(batch.cand_hist_time))

    def flat(self) -> Batch:
        """The real impressions as a flat batch, request by request, candidates in slot order."""
        r, c = self.mask.shape
        owner = torch.arange(r, device=self.mask.device).repeat_interleave(c)[self.mask.flatten()]
        ctx = self.context.select(owner)
        picked = lambda x: None if x is None else x[self.mask]  # noqa: E731
        return dataclasses.replace(ctx, sparse=self.cand_sparse[self.mask], dense=self.cand_dense[self.mask],
                                   label=self.label[self.mask], cand_hist=picked(self.cand_hist),
                                   cand_hist_time=picked(self.cand_hist_time))
