"""Sampling locations for the deformable-attention benchmarks.

Two layouts of ``[B, Q, H, L, P, 2]`` locations (x, y in [0, 1] of each level):

* ``uniform``: every point anywhere in [-0.05, 1.05] (some outside the map). No two samples are
  near each other: the worst case for caches.
* ``near``: the points scatter about two cells (normal, sigma 2 cells of each level) around a
  reference point, as a trained model's offsets do. With as many queries as encoder tokens the
  reference is the query's own token centre (the encoder), else a random point (the decoder), so
  neighbouring queries sample neighbouring values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LAYOUTS = ("uniform", "near")


def sampling_locations(
    shapes: Sequence[tuple[int, int]],
    batch: int,
    queries: int,
    heads: int,
    points: int,
    layout: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """``[batch, queries, heads, len(shapes), points, 2]`` float32 locations in the given layout."""
    levels = len(shapes)
    size = (batch, queries, heads, levels, points, 2)
    if layout == "uniform":
        return torch.rand(*size, generator=generator) * 1.1 - 0.05
    if layout != "near":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    tokens = sum(h * w for h, w in shapes)
    if queries == tokens:
        centres = []
        for h, w in shapes:
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
            centres.append(torch.stack((xs.flatten(), ys.flatten()), -1))
        reference = torch.cat(centres).expand(batch, queries, 2)
    else:
        reference = torch.rand(batch, queries, 2, generator=generator)
    cell = 1.0 / torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)  # [L, 2] (x, y)
    offsets = torch.randn(*size, generator=generator) * 2.0 * cell[:, None, :]
    return reference[:, :, None, None, None, :] + offsets
