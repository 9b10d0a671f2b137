"""DetrPostProcess: best class per query and box scaling to the original image."""

import math

import pytest
import torch

from detrlab.evaluation.postprocess import DetrPostProcess


def test_hand_checked_scores_labels_and_boxes():
    # Image 0 (h=100, w=200): q0 logits [0, ln3, ln4] -> p = [1/8, 3/8, 4/8]: best object class 1, score 3/8
    #                         q1 logits [ln2, 0, 0]   -> p = [1/2, 1/4, 1/4]: class 0, score 1/2
    # Image 1 (h=50, w=10):  the same queries.
    logits = torch.tensor([[0.0, math.log(3.0), math.log(4.0)], [math.log(2.0), 0.0, 0.0]])
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.5, 0.1]])
    outputs = {"pred_logits": torch.stack([logits, logits]), "pred_boxes": torch.stack([boxes, boxes])}
    results = DetrPostProcess()(outputs, torch.tensor([[100, 200], [50, 10]]))

    assert len(results) == 2
    for result in results:
        assert set(result) == {"scores", "labels", "boxes"}
        torch.testing.assert_close(result["scores"], torch.tensor([3 / 8, 1 / 2]))
        assert result["labels"].dtype == torch.int64 and result["labels"].tolist() == [1, 0]
    # q1: x in [0, 0.5] * w, y in [0.7, 0.8] * h
    torch.testing.assert_close(
        results[0]["boxes"], torch.tensor([[0.0, 0.0, 200.0, 100.0], [0.0, 70.0, 100.0, 80.0]])
    )
    torch.testing.assert_close(
        results[1]["boxes"], torch.tensor([[0.0, 0.0, 10.0, 50.0], [0.0, 35.0, 5.0, 40.0]])
    )


def test_output_shapes_and_no_grad():
    outputs = {
        "pred_logits": torch.randn(3, 7, 5, requires_grad=True),
        "pred_boxes": torch.rand(3, 7, 4, requires_grad=True),
    }
    results = DetrPostProcess()(outputs, torch.tensor([[10, 20]] * 3))
    for result in results:
        assert (
            result["scores"].shape == (7,)
            and result["labels"].shape == (7,)
            and result["boxes"].shape == (7, 4)
        )
        assert result["labels"].max() < 4  # the "no object" column is never a label
        assert not result["scores"].requires_grad and not result["boxes"].requires_grad


def test_wrong_orig_sizes_shape_raises():
    outputs = {"pred_logits": torch.randn(2, 3, 4), "pred_boxes": torch.rand(2, 3, 4)}
    with pytest.raises(ValueError, match="orig_sizes"):
        DetrPostProcess()(outputs, torch.tensor([10, 20]))
