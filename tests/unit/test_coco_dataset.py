"""Tests for CocoDetection (detrlab.data.coco) on a small hand-written COCO file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from detrlab.data.coco import CocoDetection

# Image 1: 40x30 RGB JPEG. Image 2: 20x10 grayscale PNG. Image 3: 16x12 RGBA PNG, no annotations.
IMAGES = [
    {"id": 1, "file_name": "rgb.jpg", "width": 40, "height": 30},
    {"id": 2, "file_name": "gray.png", "width": 20, "height": 10},
    {"id": 7, "file_name": "rgba.png", "width": 16, "height": 12},
]
# Sparse ids; names deliberately not in id order.
CATEGORIES = [
    {"id": 42, "name": "zebra"},
    {"id": 3, "name": "ant"},
    {"id": 17, "name": "moose"},
]
ANNOTATIONS = [
    # plain box on image 1, category 17 -> label 1
    {"id": 1, "image_id": 1, "category_id": 17, "bbox": [5.0, 6.0, 10.0, 8.0], "area": 80, "iscrowd": 0},
    # crowd: excluded
    {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1.0, 1.0, 5.0, 5.0], "area": 25, "iscrowd": 1},
    # runs past the right/bottom edges: clipped to x2=40, y2=30
    {"id": 3, "image_id": 1, "category_id": 42, "bbox": [30.0, 25.0, 20.0, 20.0], "area": 400, "iscrowd": 0},
    # negative origin: clipped to x1=0, y1=0 (no "iscrowd" key: treated as not crowd)
    {"id": 4, "image_id": 1, "category_id": 3, "bbox": [-4.0, -2.0, 10.0, 6.0], "area": 60},
    # zero width: dropped
    {"id": 5, "image_id": 1, "category_id": 3, "bbox": [12.0, 12.0, 0.0, 5.0], "area": 0, "iscrowd": 0},
    # entirely right of the image: zero width after clipping, dropped
    {"id": 6, "image_id": 1, "category_id": 42, "bbox": [45.0, 5.0, 5.0, 5.0], "area": 25, "iscrowd": 0},
    # image 2, category 42 -> label 2
    {"id": 7, "image_id": 2, "category_id": 42, "bbox": [2.0, 3.0, 4.0, 5.0], "area": 20, "iscrowd": 0},
]


@pytest.fixture()
def coco_dir(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(images / "rgb.jpg")
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    Image.fromarray(gray, mode="L").save(images / "gray.png")
    rgba = np.zeros((12, 16, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 128
    Image.fromarray(rgba, mode="RGBA").save(images / "rgba.png")
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}))
    return images, ann_file


def test_category_maps_are_contiguous_in_sorted_id_order(coco_dir):
    ds = CocoDetection(*coco_dir)
    assert ds.label_to_category_id == [3, 17, 42]
    assert ds.category_id_to_label == {3: 0, 17: 1, 42: 2}
    assert ds.class_names == ["ant", "moose", "zebra"]
    assert ds.num_classes == 3
    for cat_id, label in ds.category_id_to_label.items():
        assert ds.label_to_category_id[label] == cat_id


def test_image_ids_and_len(coco_dir):
    ds = CocoDetection(*coco_dir)
    assert len(ds) == 3
    assert ds.ids == [1, 2, 7]
    assert ds.coco.imgs[7]["file_name"] == "rgba.png"


def test_boxes_crowd_clipping_and_degenerate(coco_dir):
    image, target = CocoDetection(*coco_dir)[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == (30, 40)
    assert boxes.dtype == torch.float32
    # annotation 1 (label 1), 3 clipped (label 2), 4 clipped (label 0); crowd 2 and degenerate 5, 6 gone
    expected = torch.tensor([[5.0, 6.0, 15.0, 14.0], [30.0, 25.0, 40.0, 30.0], [0.0, 0.0, 6.0, 4.0]])
    torch.testing.assert_close(boxes.as_subclass(torch.Tensor), expected)
    assert target["labels"].tolist() == [1, 2, 0]
    assert target["labels"].dtype == torch.int64
    assert target["image_id"].item() == 1 and target["image_id"].dtype == torch.int64
    assert target["image_id"].ndim == 0
    assert target["orig_size"].tolist() == [30, 40]


def test_grayscale_converted_to_rgb(coco_dir):
    image, target = CocoDetection(*coco_dir)[1]
    assert image.shape == (3, 10, 20) and image.dtype == torch.uint8
    expected = torch.arange(200, dtype=torch.uint8).reshape(10, 20)
    for channel in range(3):
        assert torch.equal(image[channel], expected)
    assert target["labels"].tolist() == [2]
    torch.testing.assert_close(
        target["boxes"].as_subclass(torch.Tensor), torch.tensor([[2.0, 3.0, 6.0, 8.0]])
    )
    assert target["orig_size"].tolist() == [10, 20]


def test_rgba_converted_to_rgb_and_empty_target(coco_dir):
    image, target = CocoDetection(*coco_dir)[2]
    assert image.shape == (3, 12, 16)
    assert image[:, 0, 0].tolist() == [10, 20, 30]  # alpha dropped, colour kept
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].shape == (0,)
    assert target["image_id"].item() == 7


def test_height_width_and_aspect_ratios_from_json(coco_dir):
    ds = CocoDetection(*coco_dir)
    assert ds.get_height_and_width(0) == (30, 40)
    assert ds.get_height_and_width(2) == (12, 16)
    assert ds.aspect_ratios() == pytest.approx([40 / 30, 2.0, 16 / 12])


def test_transforms_are_applied(coco_dir):
    calls = []

    def transforms(image, target):
        calls.append(target["image_id"].item())
        return image.float() / 255, {**target, "extra": True}

    image, target = CocoDetection(*coco_dir, transforms=transforms)[1]
    assert calls == [2]
    assert image.dtype == torch.float32 and target["extra"] is True


def test_missing_annotation_file_names_the_path(coco_dir, tmp_path):
    images, _ = coco_dir
    missing = tmp_path / "nope" / "instances_val.json"
    with pytest.raises(FileNotFoundError, match=r"instances_val\.json") as info:
        CocoDetection(images, missing)
    assert str(missing) in str(info.value)
    assert "data.root" in str(info.value)


def test_missing_image_dir_names_the_path(coco_dir, tmp_path):
    _, ann_file = coco_dir
    missing = tmp_path / "no_images_here"
    with pytest.raises(FileNotFoundError) as info:
        CocoDetection(missing, ann_file)
    assert str(missing) in str(info.value)


def test_missing_image_file_names_the_path(coco_dir):
    images, ann_file = coco_dir
    (images / "gray.png").unlink()
    ds = CocoDetection(images, ann_file)
    with pytest.raises(FileNotFoundError, match=r"gray\.png"):
        ds[1]


def test_loading_prints_nothing(coco_dir, capsys):
    CocoDetection(*coco_dir)
    assert capsys.readouterr().out == ""
