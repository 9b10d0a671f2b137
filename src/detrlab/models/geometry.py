"""Box and mask geometry shared by the backbones, the transformers and the detectors.

Boxes are normalized cxcywh in ``[0, 1]``; refinement works on their inverse-sigmoid ("unactivated")
values so that any additive update stays a valid box after ``sigmoid``. Padding masks are bool
``[B, H, W]``, True on padding, which lies at the bottom / right of each image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["downsample_padding_mask", "inverse_sigmoid", "level_valid_ratios", "refine_boxes"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to [0, 1] and both terms kept >= ``eps`` (finite everywhere)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_boxes(delta: Tensor, reference: Tensor) -> Tensor:
    """Unactivated refined boxes ``[..., 4]``: ``delta`` added to the reference in inverse-sigmoid space.

    Args:
        delta: ``[..., 4]`` output of a box head.
        reference: ``[..., 4]`` reference boxes, or ``[..., 2]`` reference points (then the head's
            width and height are taken as they are), sigmoid space.
    """
    if reference.shape[-1] == 4:
        return delta + inverse_sigmoid(reference)
    return torch.cat((delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]), -1)


def downsample_padding_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """The padding mask ``[B, H, W]`` of an image, nearest-resized to a feature map's ``size`` ``(h, w)``."""
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0].bool()


def level_valid_ratios(masks: Sequence[Tensor]) -> Tensor:
    """``[B, L, 2]`` fraction (w, h) of each level's ``[B, h, w]`` mask that is not padding."""
    ratios = []
    for mask in masks:
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float() / h
        valid_w = (~mask[:, 0, :]).sum(1).float() / w
        ratios.append(torch.stack((valid_w, valid_h), -1))
    return torch.stack(ratios, 1)
