"""Level tables: the level description as device tensors, built once per shape tuple and device."""

from __future__ import annotations

import torch

from detrlab.models.level_tables import level_tables


def test_tables_describe_the_levels_and_are_built_once_per_shape():
    shapes = [(6, 9), (3, 5), (1, 1)]
    tables = level_tables(shapes, "cpu")
    assert tables.spatial_shapes.tolist() == [[6, 9], [3, 5], [1, 1]]
    assert tables.level_start_index.tolist() == [0, 54, 69]
    assert tables.offset_normalizer.tolist() == [[9.0, 6.0], [5.0, 3.0], [1.0, 1.0]]
    assert tables.spatial_shapes.dtype == tables.level_start_index.dtype == torch.long
    assert tables.offset_normalizer.dtype == torch.float32
    assert level_tables([(6, 9), (3, 5), (1, 1)], torch.device("cpu")) is tables
    assert level_tables([(6, 9), (3, 4), (1, 1)], "cpu") is not tables


def test_tables_first_made_in_inference_mode_can_be_saved_for_backward():
    with torch.inference_mode():
        tables = level_tables([(7, 3), (2, 2)], "cpu")
    offsets = torch.randn(2, 2, requires_grad=True)
    (offsets / tables.offset_normalizer).sum().backward()  # saves the normaliser for backward
    torch.testing.assert_close(offsets.grad, 1 / tables.offset_normalizer)
