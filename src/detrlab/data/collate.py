"""Batching of variable-size detection samples into a padded tensor plus padding mask."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Batch:
    """A padded batch of detection samples.

    Attributes:
        images: float [B, 3, Hmax, Wmax], zero on padding.
        mask: bool [B, Hmax, Wmax], True on padding (False on real pixels).
        targets: list of B dicts (``labels`` int64 [N], ``boxes`` float32 [N, 4] normalized cxcywh,
            ``image_id``, ``orig_size`` [2], ``size`` [2], ...).
    """

    images: torch.Tensor
    mask: torch.Tensor
    targets: list[dict[str, Any]]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> Batch:
        """Copy of the batch with every tensor (targets included) moved to ``device``.

        ``non_blocking`` defaults to True for accelerator targets: from pinned memory the copies
        then overlap with the device's work (from pageable memory they stay synchronous, which is
        still correct), so the host does not wait for the previous step. Copies to the CPU (and MPS) block,
        since nothing would tell the host when they are done.
        """
        if non_blocking is None:
            non_blocking = torch.device(device).type not in ("cpu", "mps")  # MPS: racy non_blocking copies
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Copy in page-locked memory; the DataLoader calls this when ``pin_memory=True``."""
        return self._apply(lambda t: t.pin_memory())

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        targets = [
            {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in self.targets
        ]
        return Batch(images=fn(self.images), mask=fn(self.mask), targets=targets)


def collate_detection(
    samples: Sequence[tuple[torch.Tensor, dict[str, Any]]], size_divisibility: int = 1
) -> Batch:
    """Stack ``(image [3, H_i, W_i], target)`` samples into a :class:`Batch`.

    Images are zero-padded at the bottom/right to the largest H and W in the batch, rounded up to a multiple
    of ``size_divisibility``; ``mask`` is True on the padded pixels. Use ``functools.partial`` to set
    ``size_divisibility`` for a DataLoader.
    """
    if len(samples) == 0:
        raise ValueError("collate_detection got an empty list of samples")
    images = [image for image, _ in samples]
    max_h = max(image.shape[-2] for image in images)
    max_w = max(image.shape[-1] for image in images)
    if size_divisibility > 1:
        max_h = math.ceil(max_h / size_divisibility) * size_divisibility
        max_w = math.ceil(max_w / size_divisibility) * size_divisibility

    first = images[0]
    batch = first.new_zeros((len(images), first.shape[0], max_h, max_w))
    mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        batch[i, :, :h, :w].copy_(image)
        mask[i, :h, :w] = False
    # Plain tensors: tv_tensor subclasses would otherwise leak into the model.
    batch = batch.as_subclass(torch.Tensor)
    return Batch(images=batch, mask=mask, targets=[target for _, target in samples])
