"""Confusion matrix over classes + background: known confusions, misses and spurious detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO

from detrlab.evaluation.confusion import confusion_matrix_from_coco, update_confusion_matrix

A, B, C, BACKGROUND = 0, 1, 2, 3


def _matrix() -> np.ndarray:
    return np.zeros((4, 4), dtype=np.int64)


def _update(matrix, gt_boxes, gt_labels, pred_boxes, pred_labels, pred_scores, **kwargs):
    update_confusion_matrix(
        matrix,
        np.array(gt_boxes, dtype=float).reshape(-1, 4),
        np.array(gt_labels, dtype=np.int64),
        np.array(pred_boxes, dtype=float).reshape(-1, 4),
        np.array(pred_labels, dtype=np.int64),
        np.array(pred_scores, dtype=float),
        **kwargs,
    )


def test_prediction_of_class_b_on_a_box_of_class_a_lands_in_row_a_column_b():
    matrix = _matrix()
    _update(matrix, [[10, 10, 50, 50]], [A], [[12, 11, 50, 52]], [B], [0.9])
    expected = _matrix()
    expected[A, B] = 1
    np.testing.assert_array_equal(matrix, expected)


def test_hits_misses_spurious_and_low_scores():
    matrix = _matrix()
    _update(
        matrix,
        gt_boxes=[[0, 0, 10, 10], [20, 20, 40, 40], [60, 60, 90, 90]],
        gt_labels=[A, C, B],
        pred_boxes=[[0, 0, 10, 10], [100, 100, 120, 120], [60, 60, 90, 90], [20, 20, 40, 40]],
        pred_labels=[A, C, B, C],
        # the last detection (on the C box) is below the score threshold
        pred_scores=[0.9, 0.8, 0.7, 0.1],
        score_threshold=0.3,
    )
    expected = _matrix()
    expected[A, A] = expected[B, B] = 1
    expected[C, BACKGROUND] = 1  # missed: its only detection scored too low
    expected[BACKGROUND, C] = 1  # spurious: nothing under it
    np.testing.assert_array_equal(matrix, expected)


def test_a_correct_detection_wins_over_a_better_overlapping_wrong_class():
    matrix = _matrix()
    # the B detection overlaps the A box more, but an A detection also covers it: A is found,
    # and the wrong-class duplicate is spurious rather than a confusion
    _update(matrix, [[0, 0, 40, 40]], [A], [[0, 0, 40, 40], [2, 2, 40, 40]], [B, A], [0.9, 0.8])
    expected = _matrix()
    expected[A, A] = 1
    expected[BACKGROUND, B] = 1
    np.testing.assert_array_equal(matrix, expected)


def test_iou_threshold_and_crowd_regions():
    matrix = _matrix()
    # IoU 0.25 with the box: below 0.5, so a miss plus a spurious detection; a detection on a
    # crowd region is ignored
    _update(
        matrix,
        [[0, 0, 40, 40]],
        [A],
        [[20, 0, 60, 40], [100, 100, 150, 150]],
        [A, B],
        [0.9, 0.9],
        crowd_boxes=np.array([[100.0, 100, 150, 150]]),
    )
    expected = _matrix()
    expected[A, BACKGROUND] = 1
    expected[BACKGROUND, A] = 1
    np.testing.assert_array_equal(matrix, expected)


def test_from_coco_maps_sparse_category_ids_and_counts_images_without_predictions():
    dataset = {
        "images": [{"id": i, "height": 100, "width": 100, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 30, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
        ],
        "categories": [{"id": 30, "name": "b"}, {"id": 5, "name": "a"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    # image 1: its category-30 box (index 1: ids sorted 5, 30) is detected as category 5 (index 0)
    predictions = {1: np.array([[10.0, 10, 30, 30, 0.8, 5]])}
    matrix = confusion_matrix_from_coco(coco, predictions, [1, 2])
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[1, 0] = 1
    expected[0, 2] = 1  # image 2's box, no prediction: missed
    np.testing.assert_array_equal(matrix, expected)
