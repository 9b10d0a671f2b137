"""Tests for the detection transforms (detrlab.data.transforms)."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from detrlab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomSizeCrop,
    ResizeShorterSide,
    ToDetectionTargets,
    denormalize,
    eval_transforms,
    train_transforms,
)

COLOURS = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)


def _sample(height, width, boxes, labels):
    """Black uint8 image with each XYXY box filled with the colour of its label, plus its target."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for (x1, y1, x2, y2), label in zip(boxes, labels):
        image[:, y1:y2, x1:x2] = COLOURS[label].view(3, 1, 1)
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(height, width),
        ),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": torch.tensor(5),
        "orig_size": torch.tensor([height, width]),
    }
    return tv_tensors.Image(image), target


def _check_contract(image, target):
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert image.ndim == 3 and image.shape[0] == 3
    boxes = target["boxes"]
    assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    assert boxes.shape[0] == target["labels"].shape[0]
    assert target["labels"].dtype == torch.int64
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert target["size"].dtype == torch.int64
    assert target["size"].tolist() == list(image.shape[-2:])


def _box_colours(image, boxes):
    """Mean colour (0..255) of the central half of every normalized cxcywh box of a normalized image."""
    pixels = denormalize(image) * 255
    h, w = image.shape[-2:]
    colours = []
    for cx, cy, bw, bh in boxes.tolist():
        x1, x2 = int((cx - bw / 4) * w), round((cx + bw / 4) * w)
        y1, y2 = int((cy - bh / 4) * h), round((cy + bh / 4) * h)
        colours.append(pixels[:, y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)].mean(dim=(1, 2)))
    return torch.stack(colours) if colours else torch.zeros(0, 3)


def test_flip_moves_boxes(monkeypatch):
    # 20x40 image, box x 2..10, y 4..12. Resize to shorter side 20 keeps the size.
    image, target = _sample(20, 40, [[2, 4, 10, 12]], [0])
    transform = train_transforms(scales=[20], max_size=1000, crop_scales=None)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        _check_contract(out_image, out)
        cx = out["boxes"][0, 0].item()
        # unflipped: cx = 6/40; flipped: x 30..38 -> cx = 34/40. cy, w, h unchanged.
        assert cx == pytest.approx(0.15) or cx == pytest.approx(0.85)
        torch.testing.assert_close(out["boxes"][0, 1:], torch.tensor([8 / 20, 8 / 40, 8 / 20]))
        flipped = cx > 0.5
        seen.add(flipped)
        # the red patch moved with the box
        red = denormalize(out_image)[0] > 0.5
        assert red[8, 32 if flipped else 6]
        assert not red[8, 6 if flipped else 32]
    assert seen == {True, False}


def test_train_output_contract_and_sizes():
    image, target = _sample(60, 90, [[10, 10, 30, 40], [50, 5, 85, 55]], [1, 2])
    scales = [32, 48, 64]
    transform = train_transforms(scales=scales, max_size=80, crop_scales=[40, 50], crop_size=(20, 40))
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        _check_contract(out_image, out)
        h, w = out_image.shape[-2:]
        # shorter side is one of the scales unless the longer side hit max_size
        assert min(h, w) in scales or max(h, w) == 80
        assert max(h, w) <= 80
        assert out["image_id"].item() == 5
        assert out["orig_size"].tolist() == [60, 90]


def test_crop_branch_keeps_box_contents():
    boxes = [[4, 4, 24, 28], [40, 10, 70, 40], [20, 45, 60, 75]]
    image, target = _sample(80, 80, boxes, [0, 1, 2])
    transform = train_transforms(scales=[64], max_size=200, crop_scales=[80], crop_size=(30, 60))
    dropped_some = False
    for seed in range(40):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        _check_contract(out_image, out)
        dropped_some |= len(out["labels"]) < 3
        h, w = out_image.shape[-2:]
        # slivers of a few pixels at the crop border are blurred by the resize: check the others
        big = (out["boxes"][:, 2] * w >= 4) & (out["boxes"][:, 3] * h >= 4)
        colours = _box_colours(out_image, out["boxes"][big])
        for colour, label in zip(colours, out["labels"][big].tolist()):
            # the centre of every surviving box still shows that object's colour
            assert torch.allclose(colour, COLOURS[label].float(), atol=40), (seed, label, colour)
    assert dropped_some  # crops of 30..60 px on an 80 px image lose objects sometimes


def test_random_size_crop_sizes():
    image, target = _sample(50, 100, [[0, 0, 10, 10]], [0])
    crop = RandomSizeCrop(20, 70)
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out = crop(image, target)
        h, w = out_image.shape[-2:]
        assert 20 <= h <= 50  # height clamped to the image
        assert 20 <= w <= 70
        assert tuple(out["boxes"].canvas_size) == (h, w)
    # an image smaller than min_size is kept whole
    small, small_target = _sample(10, 12, [[0, 0, 5, 5]], [0])
    out_image, out = RandomSizeCrop(20, 30)(small, small_target)
    assert out_image.shape[-2:] == (10, 12)
    with pytest.raises(ValueError, match="min_size"):
        RandomSizeCrop(30, 20)


def test_random_size_crop_shifts_boxes():
    _, target = _sample(40, 40, [[10, 12, 20, 30]], [0])
    crop = RandomSizeCrop(20, 20)
    params = {"top": 5, "left": 8, "height": 20, "width": 20}
    out = crop.transform(target["boxes"], params)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), torch.tensor([[2.0, 7.0, 12.0, 20.0]]))
    params = {"top": 20, "left": 15, "height": 20, "width": 20}
    out = crop.transform(target["boxes"], params)  # partly outside: clipped to the crop
    torch.testing.assert_close(out.as_subclass(torch.Tensor), torch.tensor([[0.0, 0.0, 5.0, 10.0]]))


def test_eval_transform_sizes_and_boxes():
    image, target = _sample(100, 200, [[20, 10, 60, 50]], [1])
    transform = eval_transforms(size=50, max_size=1000)
    out_image, out = transform(image, target)
    _check_contract(out_image, out)
    assert out_image.shape == (3, 50, 100)
    assert out["size"].tolist() == [50, 100]
    assert out["orig_size"].tolist() == [100, 200]
    # cx = 40/200, cy = 30/100, w = 40/200, h = 40/100
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.2, 0.3, 0.2, 0.4]]))
    again_image, again = transform(image, target)
    assert torch.equal(again_image, out_image) and torch.equal(again["boxes"], out["boxes"])


def test_eval_transform_caps_longer_side():
    image, target = _sample(100, 200, [[20, 10, 60, 50]], [1])
    out_image, out = eval_transforms(size=80, max_size=120)(image, target)
    assert out_image.shape[-2:] == (60, 120)
    assert out["size"].tolist() == [60, 120]


def test_eval_keeps_all_boxes():
    image, target = _sample(100, 200, [[0, 0, 1, 1], [20, 10, 60, 50]], [0, 1])
    _, out = eval_transforms(size=50, max_size=1000)(image, target)
    assert out["labels"].tolist() == [0, 1]


def test_to_detection_targets_normalizes_and_denormalize_inverts():
    image, target = _sample(4, 6, [[0, 0, 6, 4]], [2])
    image[:, 1, 1] = torch.tensor([10, 200, 90], dtype=torch.uint8)
    out_image, out = ToDetectionTargets()(image, target)
    expected = (image.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(3, 1, 1)
    torch.testing.assert_close(out_image, expected)
    torch.testing.assert_close(denormalize(out_image), image.float() / 255)
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    assert out["size"].tolist() == [4, 6]
    batch = torch.stack([out_image, out_image])
    assert denormalize(batch).shape == (2, 3, 4, 6)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)  # input target not modified


def test_train_transform_handles_images_without_boxes():
    image, target = _sample(30, 30, [], [])
    _, out = train_transforms(scales=[32], max_size=64, crop_scales=[30], crop_size=(10, 20))(image, target)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


def test_resize_shorter_side_rounds_and_allows_max_equal_size():
    image = torch.zeros(3, 427, 640, dtype=torch.uint8)
    assert ResizeShorterSide(800, 1333)(image).shape[-2:] == (800, 1199)  # 640 * 800 / 427 = 1199.06
    assert ResizeShorterSide(800, 1000)(image).shape[-2:] == (667, 1000)  # capped: 427 * 1000 / 640 = 667.2
    square = torch.zeros(3, 64, 64, dtype=torch.uint8)
    assert ResizeShorterSide(64, 64)(square).shape[-2:] == (64, 64)
    assert ResizeShorterSide(64, 64)(torch.zeros(3, 32, 96)).shape[-2:] == (21, 64)
    with pytest.raises(ValueError, match="max_size"):
        ResizeShorterSide(64, 32)
