"""CocoEvaluator: parity with pycocotools, per-class AP, gather de-duplication, edge cases."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrlab.evaluation import coco_eval as coco_eval_module
from detrlab.evaluation.coco_eval import STAT_NAMES, CocoEvaluator

CATEGORY_IDS = [3, 17, 42]  # sparse dataset ids; contiguous labels 0, 1, 2
CATEGORY_NAMES = ["cat", "dog", "kite"]
IMAGES = {1: (480, 640), 2: (300, 400), 5: (640, 480), 9: (200, 200)}  # id -> (h, w); image 9 has no objects


def _ground_truth() -> dict:
    """Small COCO dataset: small/medium/large boxes, one crowd box, one image without annotations."""
    rng = np.random.default_rng(0)
    annotations = []
    for image_id in (1, 2, 5):
        height, width = IMAGES[image_id]
        for side in (20, 24, 50, 70, 150):  # small, small, medium, medium, large
            w, h = side * rng.uniform(0.8, 1.2), side * rng.uniform(0.8, 1.2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS[:2] if image_id == 5 else CATEGORY_IDS)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    annotations.append(
        {"image_id": 2, "category_id": 17, "bbox": [10.0, 10.0, 120.0, 90.0], "area": 10800.0, "iscrowd": 1}
    )
    for ann_id, ann in enumerate(annotations, start=1):
        ann["id"] = ann_id
    return {
        "images": [
            {"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i, (h, w) in IMAGES.items()
        ],
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CATEGORY_NAMES)],
    }


def _predictions(gt: dict, image_ids, seed=1) -> list[dict[str, torch.Tensor]]:
    """Post-processor-style predictions: jittered GT boxes (some with a wrong class) plus random boxes."""
    rng = np.random.default_rng(seed)
    predictions = []
    for image_id in image_ids:
        height, width = IMAGES[image_id]
        boxes, labels, scores = [], [], []
        for ann in gt["annotations"]:
            if ann["image_id"] != image_id:
                continue
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
            boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
            label = CATEGORY_IDS.index(ann["category_id"])
            labels.append(label if rng.uniform() > 0.2 else (label + 1) % 3)
            scores.append(rng.uniform(0.3, 1.0))
        for _ in range(6):  # false positives, also on the image without objects
            x0, y0 = rng.uniform(0, width - 40), rng.uniform(0, height - 40)
            boxes.append([x0, y0, x0 + rng.uniform(5, 40), y0 + rng.uniform(5, 40)])
            labels.append(int(rng.integers(0, 3)))
            scores.append(rng.uniform(0.0, 0.6))
        predictions.append(
            {
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "boxes": torch.tensor(boxes, dtype=torch.float32),
            }
        )
    return predictions


@pytest.fixture
def gt_path(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_ground_truth()))
    return path


def _pycocotools_eval(gt_path, results_path, image_ids):
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco_gt = COCO(str(gt_path))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), "bbox")
        coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval, printed.getvalue()


@pytest.mark.parametrize("image_ids", [[1, 2, 5, 9], [2, 9, 1]], ids=["all-images", "subset"])
def test_compute_matches_pycocotools(gt_path, tmp_path, image_ids):
    evaluator = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    evaluator.update(image_ids, _predictions(_ground_truth(), image_ids))
    stats = evaluator.compute()
    evaluator.write_results(tmp_path / "out" / "results.json")

    reference, printed = _pycocotools_eval(gt_path, tmp_path / "out" / "results.json", image_ids)
    assert list(stats) == list(STAT_NAMES)
    np.testing.assert_allclose([stats[k] for k in STAT_NAMES], reference.stats, rtol=0, atol=1e-6)
    assert 0.1 < stats["AP"] < 0.95  # a non-trivial score, not all-perfect or all-zero

    # Per-class AP from the same precision array: [T, R, K, A, M], area "all", 100 detections.
    precision = reference.eval["precision"]
    per_class = evaluator.per_class_ap()
    assert list(per_class) == CATEGORY_NAMES
    for k, name in enumerate(CATEGORY_NAMES):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        expected = values.mean() if values.size else math.nan
        np.testing.assert_allclose(per_class[name], expected, rtol=0, atol=1e-6)

    # The text summary reproduces COCOeval.summarize() line by line.
    reference_lines = [line for line in printed.splitlines() if line.startswith(" Average")]
    assert evaluator.summary_table().splitlines() == reference_lines


def test_results_use_dataset_category_ids_and_xywh(gt_path):
    evaluator = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    prediction = {
        "scores": torch.tensor([0.9, 0.4]),
        "labels": torch.tensor([2, 0]),
        "boxes": torch.tensor([[10.0, 20.0, 40.0, 25.0], [0.0, 0.0, 1.0, 2.0]]),
    }
    evaluator.update([5], [prediction])
    results = evaluator.results()
    assert results[0] == {
        "image_id": 5,
        "category_id": 42,
        "bbox": [10.0, 20.0, 30.0, 5.0],
        "score": pytest.approx(0.9),
    }
    assert results[1]["category_id"] == 3 and results[1]["bbox"] == [0.0, 0.0, 1.0, 2.0]


def test_model_label_map_wider_than_the_dataset_drops_unknown_ids(gt_path):
    # A 91-logit model: class index == COCO id; ids the dataset lacks (5) cannot match and are dropped.
    raw_ids = list(range(91))
    with pytest.raises(ValueError, match="does not define"):
        CocoEvaluator(str(gt_path), label_to_category_id=raw_ids)
    evaluator = CocoEvaluator(str(gt_path), label_to_category_id=raw_ids, drop_unknown_categories=True)
    prediction = {
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([17, 5, 42]),
        "boxes": torch.tensor([[10.0, 20.0, 40.0, 25.0]] * 3),
    }
    evaluator.update([5], [prediction])
    assert [r["category_id"] for r in evaluator.results()] == [17, 42]


def test_perfect_predictions_score_one_and_missing_categories_are_nan(gt_path):
    gt = _ground_truth()
    evaluator = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    # Image 5 only has categories 3 and 17, so "kite" (42) has no ground truth there.
    anns = [a for a in gt["annotations"] if a["image_id"] == 5]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    labels = torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns])
    evaluator.update([5], [{"scores": torch.ones(len(anns)), "labels": labels, "boxes": boxes}])
    stats = evaluator.compute()
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    per_class = evaluator.per_class_ap()
    assert per_class["cat"] == pytest.approx(1.0) and per_class["dog"] == pytest.approx(1.0)
    assert math.isnan(per_class["kite"])


def test_gather_removes_images_repeated_across_ranks(gt_path, monkeypatch):
    gt = _ground_truth()
    predictions = dict(zip([1, 2, 5, 9], _predictions(gt, [1, 2, 5, 9])))
    rank0 = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    rank1 = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    rank0.update([1, 5], [predictions[1], predictions[5]])
    # The sampler padded rank 1 by repeating image 1: same image, same predictions.
    rank1.update([2, 9, 1], [predictions[2], predictions[9], predictions[1]])
    gathered = [rank0._predictions, rank1._predictions]
    monkeypatch.setattr(coco_eval_module.dist, "all_gather_objects", lambda obj: gathered)
    rank0.gather()

    assert rank0.image_ids == [1, 2, 5, 9]
    results = rank0.results()
    expected_count = sum(len(p["scores"]) for p in predictions.values())
    assert len(results) == expected_count  # image 1's detections appear once

    single = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    single.update(list(predictions), list(predictions.values()))
    assert rank0.compute() == single.compute()


def test_gather_without_process_group_is_a_no_op(gt_path):
    evaluator = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    evaluator.update([1, 2], _predictions(_ground_truth(), [1, 2]))
    before = evaluator.results()
    evaluator.gather()
    assert evaluator.results() == before


def test_zero_predictions_give_zeros(gt_path):
    evaluator = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    assert evaluator.compute() == dict.fromkeys(STAT_NAMES, 0.0)
    empty = {
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "boxes": torch.zeros(0, 4),
    }
    evaluator.update([1, 9], [empty, empty])
    assert evaluator.compute() == dict.fromkeys(STAT_NAMES, 0.0)
    assert evaluator.per_class_ap() == dict.fromkeys(CATEGORY_NAMES, 0.0)
    assert len(evaluator.summary_table().splitlines()) == 12


def test_accepts_pycocotools_object_without_modifying_it(gt_path):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    evaluator = CocoEvaluator(coco, label_to_category_id=CATEGORY_IDS)
    evaluator.update([1, 2, 5, 9], _predictions(_ground_truth(), [1, 2, 5, 9]))
    from_object = evaluator.compute()
    assert all("ignore" not in ann for ann in coco.dataset["annotations"])

    from_path = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    from_path.update([1, 2, 5, 9], _predictions(_ground_truth(), [1, 2, 5, 9]))
    assert from_object == from_path.compute()


def test_reset_forgets_predictions(gt_path):
    evaluator = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    evaluator.update([1], _predictions(_ground_truth(), [1]))
    evaluator.compute()
    evaluator.reset()
    assert evaluator.image_ids == [] and evaluator.results() == []
    with pytest.raises(RuntimeError, match="compute"):
        evaluator.summary_table()


def test_bad_inputs_raise_clear_errors(gt_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoEvaluator(str(tmp_path / "missing.json"))
    with pytest.raises(TypeError, match="coco_gt"):
        CocoEvaluator(42)
    with pytest.raises(ValueError, match="category ids"):
        CocoEvaluator(str(gt_path), label_to_category_id=[3, 18])
    evaluator = CocoEvaluator(str(gt_path), label_to_category_id=CATEGORY_IDS)
    with pytest.raises(ValueError, match="image_id 1234"):
        evaluator.update([1234], _predictions(_ground_truth(), [1]))
    bad_label = {
        "scores": torch.ones(1),
        "labels": torch.tensor([3]),
        "boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]),
    }
    with pytest.raises(ValueError, match="labels must be in"):
        evaluator.update([1], [bad_label])
    with pytest.raises(RuntimeError, match="compute"):
        evaluator.per_class_ap()
