"""Quickstart dataset: coloured shapes on textured backgrounds, written in COCO format.

``generate_shapes_dataset`` writes::

    root/
      train/000000.jpg ...          # num_train images, image_size x image_size, JPEG quality 90
      val/000000.jpg ...            # num_val images
      annotations/train.json        # COCO: images, annotations (bbox xywh, area, iscrowd=0), categories
      annotations/val.json
      recipe.json                   # the generation parameters; written last

Each image holds ``min_objects..max_objects`` filled shapes (circle, square, triangle) with random
colours, rotations and sizes (the longer side of each shape's box is ``min_size_frac..max_size_frac`` of the
image side, and at least 3 px). Shapes may overlap, but a shape is re-drawn elsewhere if it would hide more than half of an
earlier one, so every labelled object stays at least half visible. A box is the tight box of the shape's
rasterized pixels (including any part later covered by another shape).

Generation is deterministic: image ``i`` of a split is drawn from a NumPy generator seeded with
``(seed, split, i)``, so images do not depend on how many others are generated.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
"""Category names; category ids are 1, 2, 3 in this order."""

# Bump when the drawing code changes so existing datasets on disk get regenerated.
_GENERATOR_VERSION = 1
_SPLITS = ("train", "val")
_JPEG_QUALITY = 90
_MAX_PLACEMENT_TRIES = 30
_MIN_VISIBLE_FRACTION = 0.5
# Colour distance (RGB, 0..255) an object should keep from what lies under it so that it stays visible.
_MIN_COLOUR_DISTANCE = 80.0
_COLOUR_TRIES = 8
_MIN_EXTENT = 3.0  # pixels

# Unit polygons (circumscribed in the unit circle) for the polygon shapes.
_UNIT_POLYGONS = {
    "square": np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) / math.sqrt(2.0),
    "triangle": np.array(
        [[math.cos(a), math.sin(a)] for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)], dtype=np.float64
    ),
}


def generate_shapes_dataset(
    root: str | os.PathLike,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 256,
    min_objects: int = 1,
    max_objects: int = 8,
    min_size_frac: float = 0.05,
    max_size_frac: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write the synthetic shapes dataset under ``root`` (idempotent) and return ``Path(root)``.

    If ``root/recipe.json`` exists with the same parameters (and the annotation files are present) nothing
    is written. Otherwise any previous ``train/``, ``val/``, ``annotations/`` and ``recipe.json`` under
    ``root`` are deleted and the dataset is regenerated; ``recipe.json`` is written last, so an interrupted
    run is redone on the next call.
    """
    _check_args(num_train, num_val, image_size, min_objects, max_objects, min_size_frac, max_size_frac)
    root = Path(root)
    recipe = {
        "generator_version": _GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "min_objects": int(min_objects),
        "max_objects": int(max_objects),
        "min_size_frac": float(min_size_frac),
        "max_size_frac": float(max_size_frac),
        "seed": int(seed),
        "categories": list(SHAPE_NAMES),
    }
    if _is_up_to_date(root, recipe):
        return root

    _clean(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {"train": num_train, "val": num_val}
    for split_index, split in enumerate(_SPLITS):
        image_dir = root / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, split_index, i])
            drawing = _draw_image(rng, image_size, min_objects, max_objects, min_size_frac, max_size_frac)
            file_name = f"{i:06d}.jpg"
            Image.fromarray(drawing.pixels).save(image_dir / file_name, quality=_JPEG_QUALITY)
            image_id = i + 1
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            for obj in drawing.objects:
                obj.update(id=len(annotations) + 1, image_id=image_id, iscrowd=0)
                annotations.append(obj)
        coco = {
            "info": {"description": "detrlab synthetic shapes", "version": str(_GENERATOR_VERSION)},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPE_NAMES)
            ],
        }
        _write_json_atomic(root / "annotations" / f"{split}.json", coco)
    _write_json_atomic(root / "recipe.json", recipe)
    return root


def _check_args(
    num_train, num_val, image_size, min_objects, max_objects, min_size_frac, max_size_frac
) -> None:
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got num_train={num_train}, num_val={num_val}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects, got min_objects={min_objects}, max_objects={max_objects}"
        )
    if not 0 < min_size_frac <= max_size_frac <= 1:
        raise ValueError(
            "need 0 < min_size_frac <= max_size_frac <= 1, "
            f"got min_size_frac={min_size_frac}, max_size_frac={max_size_frac}"
        )


def _is_up_to_date(root: Path, recipe: dict[str, Any]) -> bool:
    recipe_file = root / "recipe.json"
    if not recipe_file.is_file():
        return False
    try:
        existing = json.loads(recipe_file.read_text())
    except json.JSONDecodeError:
        return False
    annotations_present = all((root / "annotations" / f"{split}.json").is_file() for split in _SPLITS)
    return existing == recipe and annotations_present


def _clean(root: Path) -> None:
    # Only remove what this generator writes: `root` may be shared with other files.
    (root / "recipe.json").unlink(missing_ok=True)
    for name in (*_SPLITS, "annotations"):
        if (root / name).is_dir():
            shutil.rmtree(root / name)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 [size, size, 3] in 0..255: a smooth colour field plus a weaker mid-frequency texture."""
    cells = int(rng.integers(2, 6))
    coarse = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
    cells = int(rng.integers(8, 33))
    texture = rng.standard_normal((cells, cells), dtype=np.float32)
    texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6) * 255.0
    texture = Image.fromarray(texture.astype(np.uint8)).resize((size, size), Image.BICUBIC)
    amplitude = rng.uniform(0.0, 40.0)
    smooth += (np.asarray(texture, dtype=np.float32)[..., None] / 255.0 - 0.5) * amplitude
    return smooth


def _shape_mask(shape: str, extent: float, angle: float) -> np.ndarray:
    """Bool mask of a shape whose axis-aligned extent (longer side) is ``extent`` pixels."""
    pad = 2
    side = math.ceil(extent) + 2 * pad
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    centre = side / 2.0
    if shape == "circle":
        r = extent / 2.0
        draw.ellipse([centre - r, centre - r, centre + r - 1, centre + r - 1], fill=1)
    else:
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = _UNIT_POLYGONS[shape] @ rot.T
        scale = extent / float(np.max(pts.max(axis=0) - pts.min(axis=0)))
        pts = pts * scale
        pts = pts - (pts.max(axis=0) + pts.min(axis=0)) / 2.0 + centre  # centre the rotated polygon's box
        draw.polygon([tuple(p) for p in pts], fill=1)
    mask = np.asarray(canvas, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # crop to the tight box


class _Drawing(NamedTuple):
    pixels: np.ndarray  # uint8 [size, size, 3]
    objects: list[dict[str, Any]]  # COCO fields category_id, bbox (xywh), area (visible pixels)
    owner: np.ndarray  # int16 [size, size]: index of the object visible at each pixel, -1 for background
    full_areas: list[int]  # drawn pixel count of each object before any occlusion


def _draw_image(
    rng: np.random.Generator,
    size: int,
    min_objects: int,
    max_objects: int,
    min_size_frac: float,
    max_size_frac: float,
) -> _Drawing:
    """Draw one image with its objects."""
    canvas = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int16)  # index of the object visible at each pixel
    full_area: list[int] = []  # drawn pixel count of each object
    visible = np.zeros(0, dtype=np.int64)  # currently visible pixel count of each object
    boxes: list[tuple[int, int, int, int]] = []
    categories: list[int] = []

    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _ in range(_MAX_PLACEMENT_TRIES):
            category = int(rng.integers(len(SHAPE_NAMES)))
            # below 3 px a shape is no longer recognisable (and may rasterize to nothing)
            extent = max(rng.uniform(min_size_frac, max_size_frac) * size, _MIN_EXTENT)
            mask = _shape_mask(SHAPE_NAMES[category], extent, rng.uniform(0.0, 2.0 * math.pi))
            h, w = mask.shape
            y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            window = owner[y0 : y0 + h, x0 : x0 + w]
            hidden = np.bincount(window[mask] + 1, minlength=len(full_area) + 1)[1:]
            if np.any(visible - hidden < _MIN_VISIBLE_FRACTION * np.asarray(full_area)):
                continue  # would hide too much of an earlier object: try another placement
            region = canvas[y0 : y0 + h, x0 : x0 + w]
            colour = _pick_colour(rng, region[mask].mean(axis=0))
            region[mask] = colour
            window[mask] = len(full_area)
            visible = np.append(visible - hidden, int(mask.sum()))
            full_area.append(int(mask.sum()))
            boxes.append((x0, y0, w, h))
            categories.append(category)
            break

    # Per-pixel noise over everything (objects included) at a per-image strength. Uniform rather than
    # Gaussian noise: it is several times cheaper to draw and the detector does not care.
    noise = rng.random(canvas.shape, dtype=np.float32)
    noise -= 0.5
    noise *= rng.uniform(5.0, 50.0)
    canvas += noise
    pixels = np.clip(canvas, 0, 255).astype(np.uint8)
    objects = [
        {
            "category_id": category + 1,
            "bbox": [float(x), float(y), float(w), float(h)],
            "area": float(area),
        }
        for category, (x, y, w, h), area in zip(categories, boxes, visible.tolist())
    ]
    return _Drawing(pixels, objects, owner, full_area)


def _pick_colour(rng: np.random.Generator, underneath: np.ndarray) -> np.ndarray:
    """Random RGB colour, re-drawn a few times if too close to the mean colour ``underneath`` [3]."""
    best, best_distance = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.integers(0, 256, 3).astype(np.float32)
        distance = float(np.linalg.norm(colour - underneath))
        if distance >= _MIN_COLOUR_DISTANCE:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best
