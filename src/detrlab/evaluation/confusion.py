"""Detection confusion matrix over the classes plus background (missed and spurious detections).

Rows are the ground-truth class, columns the predicted class; index ``C`` (the last) is background.
For each image, detections scoring at least ``score_threshold`` are matched one-to-one to ground
truth boxes at IoU >= ``iou_threshold`` in two rounds:

1. same-class pairs, greedily by decreasing IoU: correct detections (the diagonal);
2. the remaining detections and boxes across classes, greedily by decreasing IoU: confusions
   (a box of class A covered by a prediction of class B lands in row A, column B).

A box left unmatched is a missed detection (row = its class, column = background); a detection left
unmatched is spurious (row = background, column = its class), unless it overlaps a crowd region at
the IoU threshold, which COCO also ignores. Matching the same class first means a wrong-class
duplicate on an object that was already found counts as spurious, not as a confusion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = ["confusion_matrix_from_coco", "update_confusion_matrix"]


def update_confusion_matrix(
    matrix: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    pred_boxes: np.ndarray,
    pred_labels: np.ndarray,
    pred_scores: np.ndarray,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
    crowd_boxes: np.ndarray | None = None,
) -> None:
    """Add one image's matches to ``matrix`` (int64 ``[C+1, C+1]``, modified in place).

    Args:
        gt_boxes: ``[N, 4]`` absolute xyxy; ``gt_labels`` ``[N]`` class indices in ``0..C-1``.
        pred_boxes: ``[P, 4]`` absolute xyxy; ``pred_labels`` ``[P]`` indices, ``pred_scores`` ``[P]``.
        crowd_boxes: ``[G, 4]`` xyxy crowd regions: unmatched detections on them are not counted.
    """
    background = matrix.shape[0] - 1
    keep = np.asarray(pred_scores) >= score_threshold
    pred_boxes, pred_labels = np.asarray(pred_boxes)[keep], np.asarray(pred_labels)[keep]
    gt_labels = np.asarray(gt_labels)
    iou = _iou(gt_boxes, pred_boxes)  # [N, P]
    gt_used = np.zeros(len(gt_labels), dtype=bool)
    pred_used = np.zeros(len(pred_labels), dtype=bool)
    same_class = gt_labels[:, None] == pred_labels[None, :]
    for candidates in (same_class, ~same_class):
        for g, p in _greedy_pairs(np.where(candidates & (iou >= iou_threshold), iou, -1.0)):
            if gt_used[g] or pred_used[p]:
                continue
            gt_used[g] = pred_used[p] = True
            matrix[gt_labels[g], pred_labels[p]] += 1
    np.add.at(matrix, (gt_labels[~gt_used], background), 1)
    spurious = ~pred_used
    if crowd_boxes is not None and len(crowd_boxes) and spurious.any():
        on_crowd = (_iou(crowd_boxes, pred_boxes) >= iou_threshold).any(axis=0)
        spurious &= ~on_crowd
    np.add.at(matrix, (background, pred_labels[spurious]), 1)


def confusion_matrix_from_coco(
    coco_gt,
    predictions: Mapping[int, np.ndarray],
    image_ids: Iterable[int],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> np.ndarray:
    """The confusion matrix of COCO-format detections over ``image_ids``.

    Args:
        coco_gt: a ``COCO`` ground truth (pycocotools or faster-coco-eval); classes are its categories
            sorted by id (COCOeval's order).
        predictions: ``image_id -> [K, 6]`` rows ``(x, y, w, h, score, category_id)`` in pixels, as
            kept by :class:`~detrlab.evaluation.coco_eval.CocoEvaluator`.
        image_ids: the evaluated images (an image without predictions still counts its misses).

    Returns:
        int64 ``[C+1, C+1]``, rows ground truth, columns prediction, last index background.
    """
    category_ids = sorted(int(c) for c in coco_gt.cats)
    index_of = {category: index for index, category in enumerate(category_ids)}
    matrix = np.zeros((len(category_ids) + 1, len(category_ids) + 1), dtype=np.int64)
    for image_id in image_ids:
        annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[int(image_id)]))
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
        gt_boxes = _xywh_to_xyxy(np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4))
        gt_labels = np.array([index_of[int(a["category_id"])] for a in annotations], dtype=np.int64)
        rows = np.asarray(predictions.get(int(image_id), np.zeros((0, 6))), dtype=np.float64).reshape(-1, 6)
        known = np.isin(rows[:, 5], category_ids)
        rows = rows[known]
        update_confusion_matrix(
            matrix,
            gt_boxes[~crowd],
            gt_labels[~crowd],
            _xywh_to_xyxy(rows[:, :4]),
            np.array([index_of[int(c)] for c in rows[:, 5]], dtype=np.int64),
            rows[:, 4],
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            crowd_boxes=gt_boxes[crowd],
        )
    return matrix


def _greedy_pairs(iou: np.ndarray) -> list[tuple[int, int]]:
    """``(gt, pred)`` index pairs with a positive entry, by decreasing IoU (ties: lower indices first)."""
    gt_index, pred_index = np.nonzero(iou >= 0)
    order = np.argsort(-iou[gt_index, pred_index], kind="stable")
    return list(zip(gt_index[order].tolist(), pred_index[order].tolist()))


def _iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` IoU of xyxy boxes (torchvision's ``box_iou``)."""
    a = torch.as_tensor(np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4))
    return box_iou(a, b).numpy()


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
