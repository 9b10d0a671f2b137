"""Precision-recall / F1 curves from COCO's accumulated arrays agree with the AP numbers."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrlab.evaluation.coco_eval import CocoEvaluator
from detrlab.evaluation.curves import area_under_curve, precision_recall_curves

CATEGORIES = [(4, "ant"), (7, "bee"), (9, "cow")]


def _dataset(num_images: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": 200, "width": 300, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.integers(1, 5)):
            w, h = rng.uniform(20, 80, size=2)
            x, y = rng.uniform(0, 300 - w), rng.uniform(0, 200 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice([c for c, _ in CATEGORIES])),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in CATEGORIES],
    }


def _noisy_predictions(gt: dict, seed: int = 1) -> dict[int, dict[str, torch.Tensor]]:
    """Jittered ground truth (some of it relabelled or dropped) plus random boxes, with random scores."""
    rng = np.random.default_rng(seed)
    labels_of = {c: i for i, (c, _) in enumerate(CATEGORIES)}
    per_image: dict[int, list] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.15, size=4) * [w, h, w, h]
        label = labels_of[ann["category_id"]] if rng.random() > 0.2 else int(rng.integers(0, 3))
        box = [x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]]
        per_image[ann["image_id"]].append((box, label, rng.uniform(0.2, 1.0)))
    for rows in per_image.values():
        for _ in range(3):
            x, y = rng.uniform(0, 250), rng.uniform(0, 150)
            rows.append(
                (
                    [x, y, x + rng.uniform(10, 50), y + rng.uniform(10, 50)],
                    int(rng.integers(0, 3)),
                    rng.uniform(0, 0.7),
                )
            )
    return {
        image_id: {
            "boxes": torch.tensor([r[0] for r in rows], dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor([r[1] for r in rows], dtype=torch.long),
            "scores": torch.tensor([r[2] for r in rows], dtype=torch.float64),
        }
        for image_id, rows in per_image.items()
    }


def _evaluated(gt: dict, predictions: dict) -> CocoEvaluator:
    evaluator = CocoEvaluator(COCO_quiet(gt), label_to_category_id=[c for c, _ in CATEGORIES])
    evaluator.update(list(predictions), list(predictions.values()))
    evaluator.compute()
    return evaluator


def COCO_quiet(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def _reference_ap(gt: dict, results: list[dict], category_id: int | None) -> tuple[float, float]:
    """(AP, AP50) from pycocotools, for one category (or all), computed independently of our code."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO_quiet(gt)
        reference = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        if category_id is not None:
            reference.params.catIds = [category_id]
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return float(reference.stats[0]), float(reference.stats[1])


def test_area_under_each_class_curve_equals_its_ap50_and_ap():
    gt = _dataset()
    evaluator = _evaluated(gt, _noisy_predictions(gt))
    at_50, averaged = precision_recall_curves(evaluator.coco_eval)
    assert at_50.class_names == [n for _, n in CATEGORIES]
    areas_50, areas_avg = at_50.class_areas(), averaged.class_areas()
    results = evaluator.results()
    for category_id, name in CATEGORIES:
        ap, ap50 = _reference_ap(gt, results, category_id)
        assert 0.05 < ap50 < 0.99  # a curve with something to check
        assert areas_50[name] == pytest.approx(ap50, abs=0.01)
        assert areas_avg[name] == pytest.approx(ap, abs=0.01)
    ap, ap50 = _reference_ap(gt, results, None)
    assert area_under_curve(at_50.recall, at_50.overall_precision) == pytest.approx(ap50, abs=0.01)
    assert area_under_curve(averaged.recall, averaged.overall_precision) == pytest.approx(ap, abs=0.01)


def _one_class_case() -> CocoEvaluator:
    """Two boxes of one class; detections: hit (0.9), miss (0.8), hit (0.7)."""
    gt = {
        "images": [{"id": 1, "height": 100, "width": 100, "file_name": "1.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 4, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 4, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
        ],
        "categories": [{"id": 4, "name": "ant"}, {"id": 7, "name": "bee"}],
    }
    prediction = {
        "boxes": torch.tensor([[0.0, 0, 20, 20], [30, 0, 45, 15], [50, 50, 80, 80]]),
        "labels": torch.tensor([0, 0, 0]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
    }
    evaluator = CocoEvaluator(COCO_quiet(gt), label_to_category_id=[4, 7])
    evaluator.update([1], [prediction])
    evaluator.compute()
    return evaluator


def test_hand_computed_precision_recall_curve():
    evaluator = _one_class_case()
    at_50, _ = precision_recall_curves(evaluator.coco_eval)
    # recall up to 1/2 at precision 1 (first hit), then 2/3 (two hits in three) up to recall 1
    expected = np.where(at_50.recall <= 0.5, 1.0, 2 / 3)
    np.testing.assert_allclose(at_50.precision[0], expected)
    assert np.isnan(at_50.precision[1]).all()  # "bee" has no ground truth
    assert list(at_50.class_areas()) == ["ant"]
    assert at_50.class_areas()["ant"] == pytest.approx(evaluator.compute()["AP50"], abs=0.01)
    np.testing.assert_allclose(at_50.overall_precision, expected)


def test_f1_against_confidence():
    at_50, averaged = precision_recall_curves(_one_class_case().coco_eval)
    f1 = at_50.f1_at_confidence(np.array([0.0, 0.65, 0.85, 0.95]))
    # <= 0.7 keeps all three (P 2/3, R 1); 0.85 keeps the first hit (P 1, R 1/2); 0.95 keeps nothing
    np.testing.assert_allclose(f1[0], [0.8, 0.8, 2 / 3, 0.0], atol=1e-9)
    assert np.isnan(f1[1]).all()
    with pytest.raises(ValueError, match="single IoU threshold"):
        averaged.f1_at_confidence(np.array([0.5]))
