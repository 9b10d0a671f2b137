"""Box-format helpers: round trips and hand-checked conversions."""

import pytest
import torch

from detrlab.utils.boxes import (
    cxcywh_to_xyxy,
    normalized_cxcywh_to_absolute_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def test_cxcywh_xyxy_hand_checked():
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    torch.testing.assert_close(cxcywh_to_xyxy(boxes), torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    torch.testing.assert_close(xyxy_to_cxcywh(torch.tensor([[0.4, 0.1, 0.6, 0.7]])), boxes)


def test_xyxy_to_xywh_hand_checked():
    torch.testing.assert_close(
        xyxy_to_xywh(torch.tensor([[10.0, 20.0, 40.0, 25.0]])), torch.tensor([[10.0, 20.0, 30.0, 5.0]])
    )


def test_round_trips_keep_batch_shape():
    torch.manual_seed(0)
    cxcywh = torch.rand(3, 7, 4) * 0.5 + 0.25
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(cxcywh)), cxcywh)
    xyxy = cxcywh_to_xyxy(cxcywh)
    assert xyxy.shape == (3, 7, 4)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)


def test_normalized_to_absolute_single_image():
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 0.2]])
    sizes = torch.tensor([100, 200])  # h, w
    expected = torch.tensor([[0.0, 0.0, 200.0, 100.0], [0.0, 40.0, 100.0, 60.0]])
    torch.testing.assert_close(normalized_cxcywh_to_absolute_xyxy(boxes, sizes), expected)


def test_normalized_to_absolute_batch_uses_each_image_size():
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0]], [[0.5, 0.5, 1.0, 1.0]]])
    sizes = torch.tensor([[100, 200], [30, 40]])
    expected = torch.tensor([[[0.0, 0.0, 200.0, 100.0]], [[0.0, 0.0, 40.0, 30.0]]])
    torch.testing.assert_close(normalized_cxcywh_to_absolute_xyxy(boxes, sizes), expected)


def test_normalized_to_absolute_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sizes"):
        normalized_cxcywh_to_absolute_xyxy(torch.rand(2, 3, 4), torch.tensor([10, 10]))
