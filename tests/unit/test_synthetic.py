"""Tests for the synthetic shapes generator (detrlab.data.synthetic)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detrlab.data.synthetic import SHAPE_NAMES, _draw_image, _shape_mask, generate_shapes_dataset

SMALL = {"num_train": 12, "num_val": 4, "image_size": 64, "seed": 3}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes") / "ds", **SMALL)


def _load(root, split="train"):
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_layout_and_image_files(small_root):
    assert sorted(p.name for p in small_root.iterdir()) == ["annotations", "recipe.json", "train", "val"]
    for split, count in (("train", 12), ("val", 4)):
        data = _load(small_root, split)
        assert len(data["images"]) == count
        assert len(list((small_root / split).glob("*.jpg"))) == count
        for img in data["images"]:
            with Image.open(small_root / split / img["file_name"]) as im:
                assert im.size == (64, 64)
                assert im.mode == "RGB"
            assert (img["width"], img["height"]) == (64, 64)


def test_same_seed_gives_identical_dataset(small_root, tmp_path):
    other = generate_shapes_dataset(tmp_path / "again", **SMALL)
    for split in ("train", "val"):
        assert (other / "annotations" / f"{split}.json").read_bytes() == (
            small_root / "annotations" / f"{split}.json"
        ).read_bytes()
        for path in (small_root / split).glob("*.jpg"):
            assert (other / split / path.name).read_bytes() == path.read_bytes()


def test_different_seed_gives_different_dataset(small_root, tmp_path):
    other = generate_shapes_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    assert _load(other)["annotations"] != _load(small_root)["annotations"]


def test_image_does_not_depend_on_split_size(small_root, tmp_path):
    # Each image has its own generator, so a shorter split repeats the first images exactly.
    other = generate_shapes_dataset(tmp_path / "short", **{**SMALL, "num_train": 5})
    assert (other / "train" / "000004.jpg").read_bytes() == (small_root / "train" / "000004.jpg").read_bytes()


def test_annotations_are_valid(small_root):
    size = SMALL["image_size"]
    for split in ("train", "val"):
        data = _load(small_root, split)
        assert [c["name"] for c in data["categories"]] == list(SHAPE_NAMES)
        assert [c["id"] for c in data["categories"]] == [1, 2, 3]
        per_image = {img["id"]: 0 for img in data["images"]}
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in data["annotations"]:
            per_image[ann["image_id"]] += 1
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0
            assert ann["category_id"] in (1, 2, 3)
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= size and y + h <= size
            # longer side 5%..50% of the image side (+-1 px of rasterization)
            assert 0.05 * size - 1 <= max(w, h) <= 0.5 * size + 1
            # visible pixel count: at most the box, and at least half of the least box-filling shape
            # (a 45-degree square fills half its box, so >= 0.5 * 0.4 * box area)
            assert 0.2 * w * h <= ann["area"] <= w * h
        assert all(1 <= n <= 8 for n in per_image.values())


def test_object_count_range_and_categories(tmp_path):
    root = generate_shapes_dataset(
        tmp_path / "ds", num_train=30, num_val=1, image_size=64, min_objects=2, max_objects=3, seed=0
    )
    data = _load(root)
    counts = {img["id"]: 0 for img in data["images"]}
    for ann in data["annotations"]:
        counts[ann["image_id"]] += 1
    assert set(counts.values()) <= {2, 3}
    assert set(counts.values()) == {2, 3}  # both values occur in 30 images
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3}


def test_loadable_by_pycocotools(small_root):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(small_root / "annotations" / "train.json"))
    assert len(coco.getImgIds()) == 12
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    assert len(coco.getAnnIds()) == len(_load(small_root)["annotations"])


def test_second_call_does_not_rewrite(small_root):
    before = _mtimes(small_root)
    generate_shapes_dataset(small_root, **SMALL)
    assert _mtimes(small_root) == before


def test_changed_parameters_regenerate_and_clean(tmp_path):
    root = generate_shapes_dataset(tmp_path / "ds", **SMALL)
    generate_shapes_dataset(root, **{**SMALL, "num_train": 5})
    assert len(list((root / "train").glob("*.jpg"))) == 5  # old files removed
    assert len(_load(root)["images"]) == 5
    assert json.loads((root / "recipe.json").read_text())["num_train"] == 5


def test_interrupted_generation_is_redone(tmp_path):
    root = generate_shapes_dataset(tmp_path / "ds", **SMALL)
    # Simulate an interrupted run: files partly written, no recipe yet.
    (root / "recipe.json").unlink()
    (root / "train" / "000000.jpg").write_bytes(b"truncated")
    generate_shapes_dataset(root, **SMALL)
    with Image.open(root / "train" / "000000.jpg") as im:
        assert im.size == (64, 64)
    assert (root / "recipe.json").is_file()


def test_unrelated_files_in_root_are_kept(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    generate_shapes_dataset(root, **SMALL)
    generate_shapes_dataset(root, **{**SMALL, "seed": 9})
    assert (root / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_shape_mask_is_tight(shape):
    extent = 20.0
    for angle in np.linspace(0.0, math.pi, 7):
        mask = _shape_mask(shape, extent, float(angle))
        # the mask is cropped to the drawn pixels: every border row / column holds a pixel
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert abs(max(mask.shape) - extent) <= 1.5


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_objects"):
        generate_shapes_dataset(tmp_path, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="max_size_frac"):
        generate_shapes_dataset(tmp_path, min_size_frac=0.6, max_size_frac=0.5)


@pytest.mark.parametrize("seed", range(5))
def test_every_object_stays_at_least_half_visible(seed):
    rng = np.random.default_rng(seed)
    drawing = _draw_image(rng, 128, min_objects=8, max_objects=8, min_size_frac=0.2, max_size_frac=0.5)
    assert len(drawing.objects) >= 2
    for k, (obj, full) in enumerate(zip(drawing.objects, drawing.full_areas)):
        visible = drawing.owner == k
        assert obj["area"] == visible.sum()
        assert visible.sum() >= 0.5 * full
        # the box is the tight box of the drawn shape, so it encloses every visible pixel of it
        x, y, w, h = (int(v) for v in obj["bbox"])
        assert visible[y : y + h, x : x + w].sum() == visible.sum()
