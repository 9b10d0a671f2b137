"""Distributed helpers that also work in a plain single-process run (no process group initialized)."""

from __future__ import annotations

from typing import Any

import torch.distributed as torch_dist
from torch import Tensor

__all__ = ["all_gather_objects", "average_across_ranks", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is available and initialized."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return torch_dist.get_rank() if is_distributed() else 0


def average_across_ranks(value: Tensor) -> Tensor:
    """Mean of ``value`` over all ranks (sum all-reduce divided by the world size).

    The input is left untouched; a new, detached tensor of the same shape is returned (a normalizer,
    not something to backpropagate through). Without a process group this is a detached copy of
    ``value``. With NCCL the tensor must live on this rank's GPU.
    """
    reduced = value.detach().clone()
    if not is_distributed():
        return reduced
    torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.SUM)
    return reduced / world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Collect a picklable object from every rank; returns ``[obj_rank0, obj_rank1, ...]``.

    Every rank must call this (it is a collective). Without a process group it returns ``[obj]``.
    """
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(gathered, obj)
    return gathered
