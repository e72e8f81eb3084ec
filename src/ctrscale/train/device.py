"""Where and in what arithmetic a run computes: the device, bf16 autocast, and the CPU allocator setting."""
from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import nullcontext

import torch

from ..errors import ConfigError
from .distributed import World


def resolve_device(name: str, world: World | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: no CUDA device is available to this torch build; use "
                          f"train.device=cpu (or auto)")
    if name == "cuda" and world is not None and world.distributed:
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the OS. CPU training and serving free
    and re-allocate the same large activations every step or request; returned to the OS, each comes back as page
    faults (measured: 3.3x fewer faults, 15-20% less wall time for SUAN training at L = 500; SUAN's candidate pass
    at 1000 candidates 49 ms in the server against 21 ms with the memory kept). Memory then stays at its peak
    step's, which the process needs anyway. Linux/glibc only: False (nothing tuned) elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False


def precision_used(device: torch.device, precision: str) -> str:
    """train.precision resolved: auto is bf16 on a GPU, fp32 elsewhere."""
    return "bf16" if precision == "bf16" or (precision == "auto" and device.type == "cuda") else "fp32"


def autocast_for(device: torch.device, precision: str):
    if precision_used(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
