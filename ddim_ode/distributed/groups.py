"""The process group of a sharded run: joining the one ``torchrun`` started, rank-aware device
choice, and the two collectives the driver needs (broadcast from rank 0, gather to all)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DistInfo", "dist_info", "process_group", "rank_device", "broadcast", "gather"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the process group (world size 1 without a group)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None


def dist_info() -> DistInfo:
    """Rank and world size of the current default process group; ``(0, 1)`` without one."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = str(torch.distributed.get_backend())
        return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local, backend)
    return DistInfo(0, 1, 0, None)


@contextlib.contextmanager
def process_group(backend: str | None = None, timeout_s: float = 1800.0) -> Iterator[DistInfo]:
    """Join the job that ``torchrun`` launched, for the duration of the ``with`` block.

    Under ``torchrun`` (``WORLD_SIZE`` set in the environment) and with no default group yet, it
    initialises one from the environment (``backend`` default: ``"nccl"`` when CUDA is available,
    else ``"gloo"``; with NCCL the CUDA device is set to ``LOCAL_RANK``) and destroys it on exit.
    Without ``torchrun``, or when a group already exists, it changes nothing. Yields
    :func:`dist_info`.
    """
    created = False
    if "WORLD_SIZE" in os.environ and torch.distributed.is_available() and not torch.distributed.is_initialized():
        be = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if be not in ("nccl", "gloo"):
            raise ValueError(f"unknown backend {be!r}; allowed: 'nccl' (GPUs) or 'gloo' (CPU)")
        if be == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(be, timeout=_dt.timedelta(seconds=timeout_s))
        created = True
    try:
        yield dist_info()
    finally:
        if created:
            torch.distributed.destroy_process_group()


def rank_device(device: str | torch.device | None, info: DistInfo) -> torch.device:
    """The device this rank computes on.

    ``None``/``"auto"``: ``cuda:LOCAL_RANK`` under NCCL, or when CUDA is available and the group
    is not a gloo one, else the CPU; ``"cuda"`` without an index means ``cuda:LOCAL_RANK``.
    """
    if device is None or str(device) == "auto":
        if info.backend == "nccl" or (torch.cuda.is_available() and info.backend != "gloo"):
            return torch.device("cuda", info.local_rank)
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    return dev


def broadcast(obj: Any, info: DistInfo, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank (also a barrier); NCCL's object collectives go through ``device``."""
    if info.world_size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, device=device if info.backend == "nccl" else None)
    return box[0]


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (also a barrier)."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(out, obj)
    return out
