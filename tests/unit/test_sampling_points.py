"""The kernel benchmarks' sampling locations: the shape the op takes, and the two layouts as described."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "sampling_points.py"
_spec = importlib.util.spec_from_file_location("sampling_points", _PATH)
sampling_points = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sampling_points)

SHAPES = [(8, 10), (4, 5)]
TOKENS = 8 * 10 + 4 * 5


def test_uniform_points_cover_the_map_and_a_margin_outside():
    loc = sampling_points.sampling_locations(SHAPES, 2, 30, 4, 3, "uniform", torch.Generator().manual_seed(0))
    assert loc.shape == (2, 30, 4, 2, 3, 2)
    assert loc.min() >= -0.05 and loc.max() <= 1.05 and loc.min() < 0.05 and loc.max() > 0.95


def test_near_points_scatter_about_two_cells_around_each_encoder_token():
    g = torch.Generator().manual_seed(0)
    loc = sampling_points.sampling_locations(SHAPES, 2, TOKENS, 8, 4, "near", g)
    assert loc.shape == (2, TOKENS, 8, 2, 4, 2)
    # token 11 of level 0 (8 x 10) is row 1, column 1: centre (1.5 / 10, 1.5 / 8)
    centre = torch.tensor([1.5 / 10, 1.5 / 8])
    cells = (loc[:, 11, :, 0] - centre) * torch.tensor([10.0, 8.0])  # offsets in level-0 cells
    assert 1.5 < cells.std().item() < 2.5 and cells.mean().abs().item() < 0.5
    # the decoder case (queries != tokens): random references, still about two cells of each level
    decoder = sampling_points.sampling_locations(SHAPES, 1, 7, 8, 4, "near", g)
    assert decoder.shape == (1, 7, 8, 2, 4, 2)


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout must be one of"):
        sampling_points.sampling_locations(SHAPES, 1, 3, 1, 1, "grid", torch.Generator())
