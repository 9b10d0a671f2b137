"""Detection augmentations built on ``torchvision.transforms.v2``.

Both pipelines take ``(image, target)`` as produced by :class:`detrlab.data.coco.CocoDetection`
(``tv_tensors.Image`` uint8 [3, H, W]; ``target["boxes"]`` ``tv_tensors.BoundingBoxes`` XYXY) and return
``(image, target)`` with:

- ``image``: float32 [3, H', W'], ImageNet-normalized,
- ``target["boxes"]``: float32 [N, 4] plain tensor, normalized cx, cy, w, h in [0, 1] relative to (H', W'),
- ``target["labels"]``: int64 [N],
- ``target["size"]``: int64 [2] = (H', W'),
- ``target["image_id"]``, ``target["orig_size"]``: passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose height and width are drawn uniformly from ``[min_size, max_size]``.

    Each side is clamped to the image, so an image smaller than ``min_size`` is kept whole along that side.
    Boxes are shifted and clipped to the crop; boxes left empty should be removed afterwards with
    ``v2.SanitizeBoundingBoxes``.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 0 < min_size <= max_size, got ({min_size}, {max_size})")
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_w = int(torch.randint(min(width, self.min_size), min(width, self.max_size) + 1, ()))
        crop_h = int(torch.randint(min(height, self.min_size), min(height, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class ResizeShorterSide(v2.Transform):
    """Deterministic resize: shorter side to ``size``, unless the longer side would exceed ``max_size``.

    In that case the longer side becomes ``max_size`` instead (aspect ratio kept, sides rounded to the
    nearest pixel). Unlike ``v2.Resize``, ``max_size`` may equal ``size`` (e.g. square evaluation images).
    """

    def __init__(self, size: int, max_size: int | None = None) -> None:
        super().__init__()
        if size <= 0 or (max_size is not None and max_size < size):
            raise ValueError(
                f"ResizeShorterSide needs 0 < size <= max_size, got size={size}, max_size={max_size}"
            )
        self.size = size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        ratio = self.size / min(height, width)
        if self.max_size is not None:
            ratio = min(ratio, self.max_size / max(height, width))
        return {"size": [max(1, round(height * ratio)), max(1, round(width * ratio))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class ToDetectionTargets:
    """Final step: normalize the image and convert the target to the model's contract (see module doc)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        image = F.to_dtype(image, torch.float32, scale=True)
        image = F.normalize(image, mean=self.mean, std=self.std).as_subclass(torch.Tensor)
        height, width = image.shape[-2:]
        target = dict(target)
        boxes = target["boxes"]
        if isinstance(boxes, tv_tensors.BoundingBoxes):
            fmt = boxes.format.name.lower()
            boxes = boxes.as_subclass(torch.Tensor)
        else:
            fmt = "xyxy"
        boxes = box_convert(boxes.to(torch.float32), in_fmt=fmt, out_fmt="cxcywh")
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        target["boxes"] = (boxes / scale).clamp_(0.0, 1.0)
        target["labels"] = target["labels"].to(torch.int64)
        target["size"] = torch.tensor([height, width], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def train_transforms(
    scales: Sequence[int],
    max_size: int,
    crop_scales: Sequence[int] | None = (400, 500, 600),
    crop_size: tuple[int, int] = (384, 600),
) -> v2.Compose:
    """Training augmentation: horizontal flip, then one of two branches chosen with equal probability.

    1. resize the shorter side to a random value of ``scales`` (longer side capped at ``max_size``);
    2. resize the shorter side to a random value of ``crop_scales``, crop a random region with sides in
       ``crop_size``, then resize as in 1.

    ``crop_scales=None`` keeps only branch 1. Boxes that leave the crop are dropped together with their
    labels.
    """
    resize = v2.RandomShortestSize(min_size=list(scales), max_size=max_size)
    if crop_scales is None:
        geometric: v2.Transform = resize
    else:
        crop = v2.Compose(
            [
                v2.RandomShortestSize(min_size=list(crop_scales)),
                RandomSizeCrop(*crop_size),
                v2.RandomShortestSize(min_size=list(scales), max_size=max_size),
            ]
        )
        geometric = v2.RandomChoice([resize, crop])
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            geometric,
            # Removes boxes smaller than 1 px (e.g. outside the crop) and the matching labels.
            v2.SanitizeBoundingBoxes(),
            ToDetectionTargets(),
        ]
    )


def eval_transforms(size: int, max_size: int) -> v2.Compose:
    """Deterministic evaluation transform: shorter side to ``size``, longer side capped at ``max_size``."""
    return v2.Compose([ResizeShorterSide(size, max_size), ToDetectionTargets()])


def denormalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo the ImageNet normalization: [..., 3, H, W] normalized -> same shape in [0, 1] (for display)."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)
