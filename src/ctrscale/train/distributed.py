"""Data-parallel training with torch.distributed, launched by torchrun:

    torchrun --nproc_per_node 2 -m ctrscale.cli train --config X.yaml ...      (gloo on CPU, NCCL on GPUs)

Every rank builds the same model from the same seed and walks the same sequence of global batches (a function of
seed and epoch only, as in one process); each global batch is cut into one part per rank (rows, or whole
requests for listwise models), so an epoch covers every impression exactly once whatever the world size. Each
rank's loss is weighted by its share of the global batch (n_rank * world / n_global) before DDP averages the
gradients, so a step equals the one-process step on the whole batch. Evaluation scores a share of the batches
on each rank and gathers the predictions on every rank, so all ranks compute the same metrics (and make the
same early-stopping decision) from the same arrays as one process would. Rank 0 alone writes logs,
checkpoints and results. The checkpoint holds global step counts, so a run resumes under another world size.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"   # where collectives' tensors live: cuda under NCCL

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, value: float) -> float:
        """The sum of a number over the ranks (one small all-reduce)."""
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def gather(self, obj) -> list:
        """Every rank's object, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def init_world(device_name: str = "auto") -> World:
    """The process group torchrun describes in the environment (WORLD_SIZE > 1); one process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return World(rank, size, local, "cuda" if use_cuda else "cpu")


def close_world() -> bool:
    """Tear the process group down; True when there was one."""
    if not dist.is_initialized():
        return False
    gc.collect()    # free DDP reducers caught in reference cycles while their group still exists
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()
    return True
