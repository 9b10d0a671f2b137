"""COCO bbox evaluation time: our ``CocoEvaluator`` against pycocotools' ``COCOeval`` on the same results.

Generates a COCO-sized validation set in memory (default 5000 images, 80 categories, about 7
boxes per image, 1% crowd) and 100 detections per image (perturbed ground truth plus random
boxes, as a trained detector's top-100 looks), then times, in one process:

- ours: ``CocoEvaluator`` on the annotation file, ``update`` for every image, ``compute()``
  (faster-coco-eval underneath);
- pycocotools: ``COCO`` on the same file, ``loadRes`` + ``evaluate`` + ``accumulate`` + ``summarize``
  on the same results.

Both print the 12 COCO numbers; the script checks that they agree to 1e-6 before reporting.

    python benchmarks/coco_eval.py [--images 5000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrlab.evaluation.coco_eval import STAT_NAMES, CocoEvaluator


def make_ground_truth(num_images: int, num_categories: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(400, 641)), int(rng.integers(300, 481))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.poisson(7))):
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, num_categories + 1)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, num_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(gt: dict, per_image: int = 100, seed: int = 1) -> dict[int, dict[str, torch.Tensor]]:
    """Per image: every ground-truth box jittered (score high) and random boxes (score low), xyxy."""
    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {image["id"]: [] for image in gt["images"]}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    sizes = {image["id"]: (image["width"], image["height"]) for image in gt["images"]}
    detections = {}
    for image_id, anns in by_image.items():
        width, height = sizes[image_id]
        boxes, scores, labels = [], [], []
        for ann in anns[:per_image]:
            x, y, w, h = (v + rng.normal(0, 3) for v in ann["bbox"])
            boxes.append([x, y, x + abs(w), y + abs(h)])
            scores.append(rng.uniform(0.5, 1.0))
            labels.append(ann["category_id"] - 1)
        for _ in range(per_image - len(boxes)):
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            boxes.append([x, y, x + w, y + h])
            scores.append(rng.uniform(0.0, 0.6))
            labels.append(int(rng.integers(0, len(gt["categories"]))))
        detections[image_id] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
    return detections


def run_ours(gt_file: str, gt: dict, detections: dict) -> tuple[float, list[float]]:
    start = time.perf_counter()
    evaluator = CocoEvaluator(gt_file, label_to_category_id=[c["id"] for c in gt["categories"]])
    for image_id, prediction in detections.items():
        evaluator.update([image_id], [prediction])
    stats = evaluator.compute()
    return time.perf_counter() - start, [stats[name] for name in STAT_NAMES]


def run_pycocotools(gt_file: str, results: list[dict]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_file)
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return time.perf_counter() - start, [float(v) for v in coco_eval.stats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    gt = make_ground_truth(args.images, args.categories)
    detections = make_detections(gt)
    folder = tempfile.TemporaryDirectory()
    gt_file = str(Path(folder.name) / "instances.json")
    Path(gt_file).write_text(json.dumps(gt))
    # The same results for pycocotools, written by our evaluator (dataset ids, xywh).
    writer = CocoEvaluator(gt_file, label_to_category_id=[c["id"] for c in gt["categories"]])
    for image_id, prediction in detections.items():
        writer.update([image_id], [prediction])
    results = writer.results()
    print(
        f"{args.images} images, {len(gt['annotations'])} ground-truth boxes, {len(results)} detections; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    times: dict[str, list[float]] = {"ours": [], "pycocotools": []}
    for _ in range(args.repeats):
        ours_time, ours_stats = run_ours(gt_file, gt, detections)
        ref_time, ref_stats = run_pycocotools(gt_file, results)
        times["ours"].append(ours_time)
        times["pycocotools"].append(ref_time)
        worst = max(abs(a - b) for a, b in zip(ours_stats, ref_stats))
        if worst > 1e-6:
            raise SystemExit(f"the 12 numbers differ by {worst:.2e}: {ours_stats} vs {ref_stats}")
    print(f"AP {ours_stats[0]:.4f} (both; the 12 numbers agree to 1e-6)")
    ours, ref = min(times["ours"]), min(times["pycocotools"])
    print(
        f"ours (update + compute) min {ours:.2f} s; pycocotools (loadRes + evaluate + accumulate) min {ref:.2f} s"
    )
    print(json.dumps({"ours_s": ours, "pycocotools_s": ref, "ratio": ours / ref}))


if __name__ == "__main__":
    main()
