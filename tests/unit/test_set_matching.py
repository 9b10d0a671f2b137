"""The benchmark's set comparison: swapped queries are matched back, real differences still show."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "set_matching.py"
_spec = importlib.util.spec_from_file_location("set_matching", _PATH)
set_matching = importlib.util.module_from_spec(_spec)
sys.modules["set_matching"] = set_matching  # dataclasses resolve their module by name
_spec.loader.exec_module(set_matching)


def _outputs(seed=0, b=2, q=30, c=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, q, c, generator=g), torch.rand(b, q, 4, generator=g)


def test_swapped_queries_are_matched_back():
    logits, boxes = _outputs()
    order = torch.arange(30)
    order[[3, 17]] = order[[17, 3]]  # one tie swapped in image 1
    other_logits, other_boxes = logits.clone(), boxes.clone()
    other_logits[1], other_boxes[1] = logits[1, order] + 1e-7, boxes[1, order]
    diff = set_matching.set_difference(logits, boxes, other_logits, other_boxes)
    assert diff.moved == 2
    assert diff.boxes == 0 and diff.logits < 1e-6
    assert diff.boxes_by_position > 0.01  # what a position-by-position comparison would report


def test_a_changed_detection_is_reported_after_matching():
    logits, boxes = _outputs()
    changed = boxes.clone()
    changed[0, 5, 2] += 0.01
    diff = set_matching.set_difference(logits, boxes, logits, changed)
    assert diff.moved == 0
    assert diff.boxes == pytest.approx(0.01, abs=1e-6)


def test_outputs_of_different_shapes_are_rejected():
    logits, boxes = _outputs()
    with pytest.raises(ValueError, match="differ in shape"):
        set_matching.set_difference(logits, boxes, logits[:, :10], boxes[:, :10])
