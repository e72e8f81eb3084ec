"""SparseCTR's chunking of a history (shared/spec/sparsectr.md): the key sets of EvoAttention's global and
transition branches. Histories are right-aligned (padding first); chunk 1 is the oldest, 0 is padding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNKINGS = ("time", "fixed", "similarity")


@dataclass
class Chunks:
    """A batch of histories cut into at most P chunks. Chunk 1 is the oldest; 0 is padding (p0)."""
    id: Tensor           # (R, L) chunk of each position, 0 for padding
    valid: Tensor        # (R, P) chunk p+1 exists
    members: Tensor      # (R, P, L) 1/|p| at the members of chunk p+1: members @ X is the chunk mean
    time: Tensor         # (R, P) mean member time (float64 seconds)
    pos: Tensor          # (R, P) mean member position
    trans_idx: Tensor    # (R, P * m) the last m positions of each chunk, chunk-major (0 where absent)
    trans_valid: Tensor  # (R, P * m)


def chunk_ids(times: Tensor, valid: Tensor, n_chunks: int, mode: str = "time", tokens: Tensor | None = None) -> Tensor:
    """(R, L) chunk id of every position, vectorised over users.

    time: cut before the n_chunks - 1 largest positive gaps between adjacent behaviors (behaviors of the same
    second are never split, so a history with fewer distinct gaps gets fewer chunks); similarity: cut where
    adjacent tokens are least similar (cosine); fixed: equal-count chunks of each user's behaviors. Ties in the
    cut score go to the more recent gap."""
    r, n = valid.shape
    if mode == "fixed":
        rank = torch.cumsum(valid.long(), 1) - 1                                    # 0.. among valid
        count = valid.sum(1, keepdim=True)
        parts = torch.minimum(count, torch.full_like(count, n_chunks)).clamp_min(1)
        return torch.where(valid, 1 + rank * parts // count.clamp_min(1), 0)
    if mode not in ("time", "similarity"):
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {mode!r}")
    pair = valid[:, 1:] & valid[:, :-1]                                            # cut before position i + 1
    if mode == "time":
        gap = (times[:, 1:] - times[:, :-1]).double()
        ok = pair & (gap > 0)
    else:
        if tokens is None:
            raise ValueError("similarity chunking needs the behavior tokens")
        gap = 1.0 - F.cosine_similarity(tokens[:, 1:].double(), tokens[:, :-1].double(), dim=-1)
        ok = pair
    tie = torch.arange(1, n, device=valid.device, dtype=torch.float64) / (n + 1)   # prefer recent on ties
    score = torch.where(ok, gap + tie, -1.0)
    cut = torch.zeros(r, n, dtype=torch.bool, device=valid.device)
    k = min(n_chunks - 1, n - 1)
    if k > 0:
        top, where = score.topk(k, dim=1)
        cut[:, 1:] = torch.zeros_like(ok).scatter(1, where, top >= 0)
    return torch.where(valid, 1 + torch.cumsum(cut.long(), 1), 0)


def make_chunks(ids: Tensor, times: Tensor, n_chunks: int, m: int) -> Chunks:
    r, n = ids.shape
    p = torch.arange(1, n_chunks + 1, device=ids.device)
    onehot = ids[:, None, :] == p[None, :, None]                                   # (R, P, L)
    size = onehot.sum(-1)                                                           # (R, P)
    members = onehot.float() / size.clamp_min(1).unsqueeze(-1)
    pos = torch.arange(n, device=ids.device)
    t = (onehot.double() @ times.double().unsqueeze(-1)).squeeze(-1) / size.clamp_min(1)
    mean_pos = (onehot.float() @ pos.float()).div(size.clamp_min(1))
    end = torch.where(onehot, pos, -1).amax(-1)                                    # (R, P)
    start = torch.where(onehot, pos, n).amin(-1)
    idx = end.unsqueeze(-1) - torch.arange(m, device=ids.device)                   # (R, P, m)
    tvalid = (size > 0).unsqueeze(-1) & (idx >= start.unsqueeze(-1))
    return Chunks(ids, size > 0, members, t, mean_pos, idx.clamp_min(0).flatten(1), tvalid.flatten(1))


def chunk_ids_reference(times: Tensor, valid: Tensor, n_chunks: int) -> Tensor:
    """Per-user loop version of time chunking (tests only)."""
    out = torch.zeros_like(times)
    for u in range(times.shape[0]):
        idx = torch.nonzero(valid[u]).squeeze(1).tolist()
        gaps = [(int(times[u, b] - times[u, a]), b) for a, b in zip(idx[:-1], idx[1:])]
        cuts = {b for g, b in sorted((g for g in gaps if g[0] > 0), reverse=True)[:n_chunks - 1]}
        c = 0
        for i in idx:
            c += (i in cuts) or c == 0
            out[u, i] = c
    return out

