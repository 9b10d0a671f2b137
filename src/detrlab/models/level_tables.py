"""Device tensors describing the feature levels, cached per (level shapes, device).

Deformable attention needs the level shapes, their start offsets in the flattened token axis and
the (w, h) normaliser of the sampling offsets as tensors on the features' device. Building them
with ``torch.tensor(list, device=...)`` on every attention call is a blocking host-to-device copy
per call on a GPU; here they are built once per distinct level-shape tuple and device and reused
by every layer and every later batch of that size (multi-scale training sees a few dozen sizes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LevelTables", "level_tables"]

# Enough for every size of a multi-scale schedule; least recently used entries are dropped.
_MAX_ENTRIES = 256
_cache: OrderedDict[tuple, LevelTables] = OrderedDict()


@dataclass(frozen=True)
class LevelTables:
    """The level description of one spatial-shape tuple on one device.

    Attributes:
        spatial_shapes: int64 [L, 2], (h_l, w_l) per level.
        level_start_index: int64 [L], offset of each level in the flattened token axis.
        offset_normalizer: float32 [L, 2], (w_l, h_l): divides offsets in cells into level units.
    """

    spatial_shapes: Tensor
    level_start_index: Tensor
    offset_normalizer: Tensor


def _build(shapes: tuple[tuple[int, int], ...], device: torch.device) -> LevelTables:
    host = torch.tensor(shapes, dtype=torch.long).reshape(-1, 2)
    starts = torch.cat((host.new_zeros(1), host.prod(1).cumsum(0)[:-1]))
    normalizer = host.flip(1).to(torch.float32)
    # One copy of the three tables packed together instead of three transfers.
    packed = torch.cat((host.flatten(), starts, normalizer.flatten().to(torch.long))).to(device)
    n = len(shapes)
    return LevelTables(
        spatial_shapes=packed[: 2 * n].view(n, 2),
        level_start_index=packed[2 * n : 3 * n],
        offset_normalizer=packed[3 * n :].view(n, 2).to(torch.float32),
    )


def level_tables(spatial_shapes: Sequence[tuple[int, int]], device: torch.device | str) -> LevelTables:
    """The :class:`LevelTables` of ``spatial_shapes`` ((h_l, w_l) per level) on ``device``, cached.

    Cached tensors are ordinary tensors even when first requested under ``torch.inference_mode``
    (validation before training), so training may save them for backward. While ``torch.compile``
    traces, fresh tensors are built (they become graph constants) instead of touching the cache.
    """
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    device = torch.device(device)
    if torch.compiler.is_compiling():
        return _build(shapes, device)
    key = (shapes, device)
    tables = _cache.get(key)
    if tables is None:
        with torch.inference_mode(False), torch.no_grad():
            tables = _build(shapes, device)
        _cache[key] = tables
        if len(_cache) > _MAX_ENTRIES:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return tables
