"""Indexing helpers shared by the loss parts: gather the matched (query, target) pairs of a batch."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Indices", "matched_query_index", "matched_target_values", "upcast_to_float32"]

#: Per image, ``(query_idx, target_idx)`` int64 tensors of equal length (an assignment's output).
Indices = list[tuple[Tensor, Tensor]]


def upcast_to_float32(tensor: Tensor) -> Tensor:
    """Half/bfloat16 to float32 (GIoU's area products and the focal loss lose too much in 16 bits)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def matched_query_index(indices: Indices, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(batch_idx, query_idx)`` of all matched queries, for indexing ``[B, Q, ...]`` tensors."""
    batch_idx = torch.cat([torch.full_like(query, b) for b, (query, _) in enumerate(indices)])
    query_idx = torch.cat([query for query, _ in indices])
    return batch_idx.to(device), query_idx.to(device)


def matched_target_values(targets: list[dict], indices: Indices, key: str, device: torch.device) -> Tensor:
    """``targets[b][key]`` of each matched target, in the order of :func:`matched_query_index`."""
    return torch.cat([t[key][target.to(t[key].device)] for t, (_, target) in zip(targets, indices)]).to(
        device
    )
