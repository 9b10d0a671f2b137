"""Box-format helpers: thin wrappers over :mod:`torchvision.ops` with the conversions detrlab needs.

Conventions used across the project:

* ``cxcywh``: centre x, centre y, width, height (the detector's ``pred_boxes`` and the targets' ``boxes``,
  normalized to [0, 1] by the unpadded image size).
* ``xyxy``: top-left x, top-left y, bottom-right x, bottom-right y (what IoU functions expect).
* ``xywh``: top-left x, top-left y, width, height (the COCO results format).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "cxcywh_to_xyxy",
    "normalized_cxcywh_to_absolute_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``[..., 4]`` boxes from (cx, cy, w, h) to (x0, y0, x1, y1)."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert ``[..., 4]`` boxes from (x0, y0, x1, y1) to (cx, cy, w, h)."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Convert ``[..., 4]`` boxes from (x0, y0, x1, y1) to COCO's (x, y, w, h)."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="xywh")


def normalized_cxcywh_to_absolute_xyxy(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Turn normalized (cx, cy, w, h) boxes into absolute-pixel (x0, y0, x1, y1) boxes.

    Args:
        boxes: ``[N, 4]`` boxes of one image, or ``[B, Q, 4]`` boxes of a batch, values in [0, 1]
            relative to the image size.
        sizes: ``[2]`` (h, w) of the one image for ``[N, 4]`` boxes, or ``[B, 2]`` (h, w) per image
            for ``[B, Q, 4]`` boxes. Any numeric dtype.

    Returns:
        Boxes of the same shape and dtype as ``boxes``, in pixels of the given image sizes.
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 coordinates in the last dim, got shape {tuple(boxes.shape)}")
    if boxes.dim() == 2 and sizes.shape == (2,):
        height, width = sizes.unbind(-1)
    elif boxes.dim() == 3 and sizes.dim() == 2 and sizes.shape == (boxes.shape[0], 2):
        # [B, 1] so that each image's size broadcasts over its Q boxes
        height, width = sizes[:, :1], sizes[:, 1:]
    else:
        raise ValueError(
            "expected boxes [N, 4] with sizes [2] (h, w), or boxes [B, Q, 4] with sizes [B, 2]; "
            f"got boxes {tuple(boxes.shape)} and sizes {tuple(sizes.shape)}"
        )
    scale = torch.stack([width, height, width, height], dim=-1).to(boxes)
    return cxcywh_to_xyxy(boxes) * scale
