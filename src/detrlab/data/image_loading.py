"""Decoding image files to RGB, with errors that name the file, and the bad-image policies."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from detrlab.errors import CorruptImageError

#: Accepted values of ``on_bad_image``: raise, or replace the sample by the next readable one.
BAD_IMAGE_POLICIES = ("error", "skip")


def decode_rgb(path: str | os.PathLike) -> tv_tensors.Image:
    """Decode ``path`` as RGB uint8 [3, H, W] (grayscale, RGBA, CMYK and 16-bit files converted).

    Raises:
        CorruptImageError: the file is empty, truncated, corrupt or not a supported image format
            (JPEG, PNG, WebP, GIF); the message names the file.
    """
    path = Path(path)
    try:
        # EXIF orientation is not applied: COCO boxes refer to the stored pixel layout.
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except RuntimeError as error:
        # torchvision prefixes the reason with its C++ source location; keep the reason only.
        reason = re.sub(r"^[^,]*, \S+:\d+, ", "", str(error)).strip().rstrip(".")
        raise CorruptImageError(
            f"Image '{path}' cannot be decoded: {reason}. Replace the file, remove it from the annotation "
            "file, or set data.on_bad_image=skip to train on the other images (each replacement is logged).",
            path=path,
            reason=reason,
        ) from error
    if image.dtype != torch.uint8:  # 16-bit PNGs
        image = F.to_dtype(image, torch.uint8, scale=True)
    return tv_tensors.Image(image)
