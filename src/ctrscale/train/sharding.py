"""Row-wise sharded embedding tables over torch.distributed (`train.embedding_sharding: row`).

Under plain DDP every rank holds every embedding table and its optimizer moments; with row sharding, rank r
holds rows r, r + W, r + 2W, ... of each large table (cyclic, so the frequent low ids, which vocabularies assign
first, spread evenly) and their Adam moments: a W-th of the memory. A lookup sends each id to its owner with
one all-to-all, the owner gathers the rows, and a second all-to-all brings them back; backward runs the same
exchange in reverse, so gradients land on the owner. DDP averages the other gradients over ranks, while the
exchange sums the embedding gradients; each shard's gradient is divided by W so a step equals the one-process
step. Checkpoints always hold whole tables (gathered by `full_state`), so a run resumes under another world
size, and a sharded run's best.pt loads into a one-process model. torchrec's sharded collections are the
alternative on GPUs; its CPU build (fbgemm-gpu-cpu 1.9) does not load with torch 2.13 here, so ctrscale shards
with torch.distributed alone.

Every rank must run the same sequence of lookups (collectives): the recipe feeds a rank with no rows in a step
a stand-in batch weighted 0, and pads evaluation so all ranks score as many batches.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..models.tables import EmbeddingTable, Table


class _Exchange(torch.autograd.Function):
    """All-to-all of rows (`out_sizes[r]` rows come from rank r, `in_sizes[r]` go to it) whose backward sends
    the gradients back the same way. Synchronous, so no collective outlives its step."""

    @staticmethod
    def forward(ctx, rows: Tensor, out_sizes: list[int], in_sizes: list[int]) -> Tensor:
        ctx.sizes = out_sizes, in_sizes
        out = rows.new_empty((sum(out_sizes), *rows.shape[1:]))
        dist.all_to_all_single(out, rows.contiguous(), out_sizes, in_sizes)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out_sizes, in_sizes = ctx.sizes
        back = grad.new_empty((sum(in_sizes), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_sizes, out_sizes)
        return back, None, None


class RowShardedEmbedding(nn.Module, Table):
    """nn.Embedding(num_embeddings, dim, padding_idx=0) whose rows are spread over the ranks: `weight` holds rows
    rank, rank + world, ... of the whole table. Same inputs, same outputs."""

    def __init__(self, full_weight: Tensor, rank: int, world: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = full_weight.shape
        self.rank, self.world = rank, world
        self.weight = nn.Parameter(full_weight.detach()[rank::world].clone())
        self.weight.register_hook(lambda g: g / self.world)    # the exchange sums over ranks; DDP averages

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        owner = flat % self.world
        order = torch.argsort(owner, stable=True)
        send = torch.bincount(owner, minlength=self.world)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)
        send_sizes, recv_sizes = send.tolist(), recv.tolist()
        wanted = flat.new_empty(sum(recv_sizes))
        dist.all_to_all_single(wanted, (flat[order] // self.world).contiguous(), recv_sizes, send_sizes)
        rows = nn.functional.embedding(wanted, self.weight)
        back = _Exchange.apply(rows, send_sizes, recv_sizes)
        out = back[torch.argsort(order)]                                       # undo the sort by owner
        out = out.masked_fill((flat == 0).unsqueeze(-1), 0.0)                  # padding id: zeros, no gradient
        return out.view(*ids.shape, self.embedding_dim)

    def gather_rows(self, local: Tensor) -> Tensor:
        """The whole-table tensor from every rank's row slice (the weight, or an optimizer moment); collective."""
        most = -(-self.num_embeddings // self.world)
        padded = local.new_zeros((most, *local.shape[1:]))
        padded[:len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        full = local.new_empty((self.num_embeddings, *local.shape[1:]))
        for r, part in enumerate(parts):
            full[r::self.world] = part[:len(range(r, self.num_embeddings, self.world))]
        return full

    def mine(self, full: Tensor) -> Tensor:
        return full[self.rank::self.world]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].shape[0] == self.num_embeddings:   # checkpoints hold whole tables
            state_dict[key] = self.mine(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows {self.rank}::{self.world}"


def shard_tables(module: nn.Module, rank: int, world: int, min_rows: int) -> list[RowShardedEmbedding]:
    """Replace every embedding table with at least `min_rows` rows by its row-sharded equivalent (same values)."""
    out = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, EmbeddingTable) and child.num_embeddings >= min_rows:
                if child.padding_idx not in (None, 0):
                    raise ValueError(f"row sharding supports padding id 0 only ({name}: {child.padding_idx})")
                sharded = RowShardedEmbedding(child.weight, rank, world)
                setattr(parent, name, sharded)
                out.append(sharded)
    return out


def shards_of(module: nn.Module) -> list[RowShardedEmbedding]:
    return [m for m in module.modules() if isinstance(m, RowShardedEmbedding)]


def full_state(module: nn.Module) -> dict:
    """module.state_dict() with every sharded table whole; a collective: every rank must call it."""
    state = module.state_dict()
    names = {id(p): n for n, p in module.named_parameters()}
    for s in shards_of(module):
        state[names[id(s.weight)]] = s.gather_rows(s.weight.detach())
    return state


def _param_index(opt: torch.optim.Optimizer) -> dict[int, int]:
    return {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}


def full_optimizer_state(opt: torch.optim.Optimizer, shards: list[RowShardedEmbedding]) -> dict:
    """opt.state_dict() with the sharded tables' per-row moments whole; a collective."""
    state = opt.state_dict()
    index = _param_index(opt)
    for s in shards:
        i = index[id(s.weight)]
        if i not in state["state"]:
            continue
        slot = state["state"][i] = dict(state["state"][i])       # state_dict() shares the live per-param dicts
        for k, v in list(slot.items()):
            if torch.is_tensor(v) and v.dim() and v.shape[0] == len(s.weight):
                slot[k] = s.gather_rows(v)
    return state


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict, shards: list[RowShardedEmbedding]) -> None:
    """Load a state saved whole (by `full_optimizer_state` or a one-process run), keeping this rank's rows."""
    index = _param_index(opt)
    for s in shards:
        slot = state["state"].get(index[id(s.weight)], {})
        for k, v in list(slot.items()):
            if torch.is_tensor(v) and v.dim() and v.shape[0] == s.num_embeddings:
                slot[k] = s.mine(v)
    opt.load_state_dict(state)


def clip_gradients(params, max_norm: float, shards: list[RowShardedEmbedding]) -> torch.Tensor:
    """torch's clip_grad_norm_ over the whole model: dense gradients are equal on every rank after DDP, a
    shard's are its own, so the global norm adds the shards' squared norms over the ranks. Returns that norm
    (before clipping); max_norm=inf only measures it."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    sharded = {id(s.weight) for s in shards}
    zero = torch.zeros((), device=params[0].device)
    dense_sq = sum(((p.grad.float() ** 2).sum() for p in params if id(p) not in sharded), zero)
    shard_sq = sum(((p.grad.float() ** 2).sum() for p in params if id(p) in sharded), zero)
    dist.all_reduce(shard_sq)
    norm = (dense_sq + shard_sq).sqrt()
    if max_norm != float("inf"):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p in params:
            p.grad.mul_(coef.to(p.grad.dtype))
    return norm
