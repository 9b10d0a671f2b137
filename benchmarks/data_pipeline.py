"""Data pipeline throughput: decoded and augmented images per second in one worker process.

Generates 640x480 JPEGs with box annotations (a COCO-format folder), then times, in this one
process with one CPU thread (what a DataLoader worker does):

- ours, train: ``CocoDetection`` + the training augmentation (flip, multi-scale 480..800 / crop
  branch, max 1333, normalize) — decode included;
- ours, eval: ``CocoDetection`` + the evaluation transform (shorter side 800, max 1333, normalize);
- Hugging Face ``DetaImageProcessor`` (resize 800/1333, rescale, normalize, pad, annotation
  conversion) on the same files, decoded with PIL as its pipelines do.

The processor's work matches our evaluation transform (deterministic resize + normalize, boxes
converted), so the ratio is taken between those two.

    python benchmarks/data_pipeline.py [--images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_dataset(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` 640x480 JPEGs (smooth noise + rectangles, quality 90) and their COCO JSON."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        # Low-frequency noise upsampled: compresses like a photo, not like white noise.
        small = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(small).resize((640, 480), Image.BILINEAR)).copy()
        for _ in range(int(rng.integers(3, 12))):
            w, h = rng.integers(20, 300), rng.integers(20, 250)
            x, y = rng.integers(0, 640 - w), rng.integers(0, 480 - h)
            pixels[y : y + h, x : x + w] = rng.integers(0, 256, size=3)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        name = f"{image_id:06d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        images.append({"id": image_id, "file_name": name, "height": 480, "width": 640})
    categories = [{"id": i, "name": f"class_{i}"} for i in (1, 2, 3)]
    annotation_file = folder / "annotations.json"
    annotation_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return annotation_file


def images_per_second(step: Callable[[int], object], count: int, repeats: int) -> float:
    """Best of ``repeats`` passes over ``count`` items (the least disturbed by other processes)."""
    step(0)  # warm-up: lazy imports, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(count):
            step(index)
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="number of generated 640x480 JPEGs")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best one counts")
    args = parser.parse_args()

    from transformers.models.deprecated.deta import DetaImageProcessor

    from detrlab.data.coco import CocoDetection
    from detrlab.data.transforms import eval_transforms, train_transforms

    torch.set_num_threads(1)  # one DataLoader worker = one process, one thread
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        annotation_file = make_dataset(folder, args.images)
        ours_train = CocoDetection(
            folder,
            annotation_file,
            train_transforms(list(range(480, 801, 32)), 1333, (400, 500, 600), (384, 600)),
        )
        ours_eval = CocoDetection(folder, annotation_file, eval_transforms(800, 1333))

        processor = DetaImageProcessor()
        coco = ours_eval.coco

        def hugging_face(index: int) -> object:
            image_id = ours_eval.ids[index]
            image = Image.open(folder / coco.imgs[image_id]["file_name"]).convert("RGB")
            target = {"image_id": image_id, "annotations": coco.imgToAnns[image_id]}
            return processor(images=image, annotations=target, return_tensors="pt")

        figures = {
            "ours (train augmentation)": images_per_second(ours_train.__getitem__, args.images, args.repeats),
            "ours (eval transform, 800/1333)": images_per_second(
                ours_eval.__getitem__, args.images, args.repeats
            ),
            "DetaImageProcessor (800/1333)": images_per_second(hugging_face, args.images, args.repeats),
        }

    print(f"{args.images} JPEGs 640x480, 1 process, 1 thread, best of {args.repeats} passes")
    print(f"machine: {platform.machine()} {platform.processor() or ''} torch {torch.__version__}".rstrip())
    for name, value in figures.items():
        print(f"  {name:<34} {value:8.1f} images/s")
    ratio = figures["ours (eval transform, 800/1333)"] / figures["DetaImageProcessor (800/1333)"]
    print(f"ratio ours eval / DetaImageProcessor: {ratio:.2f}x")


if __name__ == "__main__":
    main()
