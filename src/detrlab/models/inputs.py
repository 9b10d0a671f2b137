"""The detector input contract, checked at the API boundary: ``detector(images, mask)``.

Wrong inputs otherwise fail deep inside a backbone or the deformable attention with a message about
some intermediate tensor; these checks name the argument and the fix instead. They look only at
shapes, dtypes and devices, except the all-padding check, which reads the mask's values and so
runs only where reading values is free (CPU tensors, see
:func:`detrlab.utils.host_sync.values_are_free`) and outside export/compile tracing: on an accelerator
it would synchronise the device on every forward, and a traced graph cannot branch on values (masks
built by ``detrlab.data.collate`` always have a valid pixel per image).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detrlab.utils.host_sync import values_are_free

__all__ = ["check_detector_inputs"]


def check_detector_inputs(images: Tensor, mask: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` / ``mask`` follow the detector contract.

    Args:
        images: float [B, 3, H, W] with B, H, W >= 1 (normalized, zero-padded; any image size works,
            also smaller than the backbone's coarsest stride).
        mask: bool [B, H, W] on the same device, True on padding; every image has at least one valid
            pixel (checked for CPU tensors).
    """
    if not isinstance(images, Tensor) or not isinstance(mask, Tensor):
        raise TypeError(
            f"detector(images, mask) takes two tensors, got {type(images).__name__} and {type(mask).__name__}; "
            "batch a list of images with detrlab.data.collate.collate_detection"
        )
    if images.ndim == 3 and images.shape[0] in (1, 3, 4):
        raise ValueError(
            f"images must be batched [B, 3, H, W], got one image {tuple(images.shape)}: use images[None] "
            "and mask[None]"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        channels = images.shape[1] if images.ndim == 4 else None
        hint = " (grayscale: images.expand(-1, 3, -1, -1); RGBA: images[:, :3])" if channels in (1, 4) else ""
        raise ValueError(f"images must be [B, 3, H, W] RGB, got shape {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (normalized pixels), got {images.dtype}: convert uint8 images "
            "with the data transforms (to float in [0, 1], then ImageNet normalization)"
        )
    b, _, h, w = images.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(
            f"images is empty: shape {tuple(images.shape)}; pass at least one image of 1x1 or more"
        )
    if mask.dtype != torch.bool or tuple(mask.shape) != (b, h, w):
        raise ValueError(
            f"mask must be a bool tensor [B, H, W] = {(b, h, w)} (True on padding), got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    if mask.device != images.device:
        raise ValueError(
            f"images are on {images.device} but mask is on {mask.device}; move both to one device"
        )
    # Tracing for export or compilation sees symbolic values: a branch on them cannot be traced.
    if not values_are_free(mask) or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return
    fully_padded = mask.flatten(1).all(dim=1)
    if bool(fully_padded.any()):
        raise ValueError(
            f"mask marks every pixel of image(s) {fully_padded.nonzero().flatten().tolist()} as padding; "
            "the mask is True on padding and False on the image (invert a valid-pixel mask with ~mask)"
        )
