"""Top-k / NMS post-processing of sigmoid-logit detectors."""

from __future__ import annotations

import pytest
import torch

from detrlab.evaluation.sigmoid_postprocess import SigmoidTopKPostProcess


def _outputs():
    probs = torch.tensor(
        [
            [[0.9, 0.1, 0.8], [0.2, 0.7, 0.05], [0.85, 0.3, 0.6]],  # query 2 duplicates query 0's box
        ]
    )
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]]])
    return {"pred_logits": torch.logit(probs), "pred_boxes": boxes}


def test_top_k_over_query_class_pairs():
    post = SigmoidTopKPostProcess(num_detections=4)
    (res,) = post(_outputs(), torch.tensor([[100, 200]]))
    torch.testing.assert_close(res["scores"], torch.tensor([0.9, 0.85, 0.8, 0.7]))
    assert res["labels"].tolist() == [0, 0, 2, 1]
    assert res["labels"].dtype == torch.int64
    # query 0 box (cx .5, cy .5, w .2, h .2) on a 100 x 200 (h x w) image
    torch.testing.assert_close(res["boxes"][0], torch.tensor([80.0, 40.0, 120.0, 60.0]))
    torch.testing.assert_close(res["boxes"][3], torch.tensor([30.0, 15.0, 50.0, 25.0]))


def test_class_wise_nms_removes_duplicates_of_the_same_class_only():
    post = SigmoidTopKPostProcess(num_detections=100, nms_iou=0.7)
    (res,) = post(_outputs(), torch.tensor([[100, 200]]))
    # queries 0 and 2 share a box: per class only the better of the two survives (3 of 9 pairs go);
    # query 1's pairs all survive
    pairs = list(zip(res["scores"].tolist(), res["labels"].tolist()))
    assert len(pairs) == 6
    assert pairs[:3] == [(pytest.approx(0.9), 0), (pytest.approx(0.8), 2), (pytest.approx(0.7), 1)]
    assert (pytest.approx(0.3), 1) in pairs and (pytest.approx(0.1), 1) not in pairs
    assert (pytest.approx(0.85), 0) not in pairs and (pytest.approx(0.6), 2) not in pairs
    # pre-NMS top-k larger than Q*C (9 pairs) and a detection cap
    (res,) = SigmoidTopKPostProcess(num_detections=2, nms_iou=0.7, pre_nms_topk=10000)(
        _outputs(), torch.tensor([[100, 200]])
    )
    assert res["labels"].tolist() == [0, 2]


def test_bad_orig_sizes_is_rejected():
    with pytest.raises(ValueError, match="orig_sizes"):
        SigmoidTopKPostProcess()(_outputs(), torch.tensor([100, 200]))
