"""DETA's IoU-based one-to-many assigners for the encoder proposals (stage 1) and decoder queries (stage 2).

Unlike Hungarian matching, a target may get several positive predictions: every prediction whose
box overlaps a target enough (plus each target's best prediction) is a candidate, a random subsample
bounds how many positives an image gets, and each target keeps its top-``k`` candidates by IoU.
The boxes compared with the targets are the *inputs* of a stage (anchors or the decoder's proposal
boxes), not its predictions, so the assignment is stable from the first step on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detrlab.losses.sampling import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    label_by_iou,
    subsample_masks,
    topk_per_target_from_counts,
)
from detrlab.utils.boxes import cxcywh_to_xyxy

__all__ = ["IoUAssigner", "Stage1Assigner", "Stage2Assigner"]

Indices = list[tuple[Tensor, Tensor]]


class IoUAssigner(nn.Module):
    """Assign boxes to targets by IoU thresholds, a capped random sample and top-k per target.

    Per image: IoU below ``negative_below`` is negative, at least ``positive_from`` is positive, in
    between ignored; each target's highest-IoU box is positive too (low-quality match). Then
    :func:`~detrlab.losses.sampling.subsample_labels` keeps at most ``samples_per_image`` labelled
    boxes with at most ``positive_fraction`` of them positive, and each target ``t`` with ``c_t``
    sampled positives gets its ``min(c_t, max_positives_per_target)`` highest-IoU boxes.

    Args:
        negative_below: IoU under which a box is negative.
        positive_from: IoU from which a box is positive (``== negative_below``: nothing is ignored).
        samples_per_image: Size of the random sample of labelled boxes per image.
        positive_fraction: Largest share of positives in that sample.
        max_positives_per_target: ``k`` of the top-k per target.
    """

    def __init__(
        self,
        negative_below: float,
        positive_from: float,
        samples_per_image: int,
        positive_fraction: float,
        max_positives_per_target: int = 4,
    ) -> None:
        super().__init__()
        if not 0.0 <= negative_below <= positive_from <= 1.0:
            raise ValueError(
                f"{type(self).__name__}: need 0 <= negative_below <= positive_from <= 1, got "
                f"negative_below={negative_below}, positive_from={positive_from}"
            )
        if samples_per_image < 1 or not 0.0 < positive_fraction <= 1.0 or max_positives_per_target < 1:
            raise ValueError(
                f"{type(self).__name__}: need samples_per_image >= 1, 0 < positive_fraction <= 1 and "
                f"max_positives_per_target >= 1, got {samples_per_image}, {positive_fraction}, "
                f"{max_positives_per_target}"
            )
        self.negative_below = float(negative_below)
        self.positive_from = float(positive_from)
        self.samples_per_image = int(samples_per_image)
        self.positive_fraction = float(positive_fraction)
        self.max_positives_per_target = int(max_positives_per_target)
        if self.negative_below == self.positive_from:
            self.thresholds: tuple[float, ...] = (self.positive_from,)
            self.labels: tuple[int, ...] = (NEGATIVE, POSITIVE)
        else:
            self.thresholds = (self.negative_below, self.positive_from)
            self.labels = (NEGATIVE, IGNORE, POSITIVE)

    def extra_repr(self) -> str:
        return (
            f"negative_below={self.negative_below}, positive_from={self.positive_from}, "
            f"samples_per_image={self.samples_per_image}, positive_fraction={self.positive_fraction}, "
            f"max_positives_per_target={self.max_positives_per_target}"
        )

    @torch.no_grad()
    def assign_image(
        self,
        boxes: Tensor,
        target_boxes: Tensor,
        valid: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Positive ``(box_idx, target_idx)`` pairs of one image.

        Args:
            boxes: ``[N, 4]`` normalized cxcywh boxes to assign (anchors or proposals).
            target_boxes: ``[M, 4]`` normalized cxcywh ground-truth boxes.
            valid: Optional bool ``[N]``; ``False`` boxes are never positive.
            generator: Optional random generator for the subsampling.

        Returns:
            Two int64 tensors of equal length on ``boxes.device``, grouped by ascending target.
        """
        device = boxes.device
        if len(target_boxes) == 0 or len(boxes) == 0:
            empty = torch.empty(0, dtype=torch.int64, device=device)
            return empty, empty.clone()
        # float32 IoU: half precision would create spurious ties at the thresholds and in the top-k
        iou = box_iou(cxcywh_to_xyxy(target_boxes.float().to(device)), cxcywh_to_xyxy(boxes.float()))
        if valid is not None:
            valid = valid.to(device=device, dtype=torch.bool)
            iou = iou.masked_fill(~valid[None, :], -1.0)
        matched_target, match_label = label_by_iou(iou, self.thresholds, self.labels, True, valid)
        positive, _ = subsample_masks(
            match_label, self.samples_per_image, self.positive_fraction, generator=generator
        )
        # Positives per target, counted on the device: the only sync left is the result's length.
        counts = torch.zeros(len(target_boxes), dtype=torch.int64, device=device)
        counts.scatter_add_(0, matched_target, positive.long())
        return topk_per_target_from_counts(counts, iou, self.max_positives_per_target)

    @torch.no_grad()
    def forward(
        self, boxes: Tensor, targets: list[dict[str, Tensor]], valid: Tensor | None = None
    ) -> Indices:
        """Assign every image's boxes.

        Args:
            boxes: ``[B, N, 4]`` normalized cxcywh boxes.
            targets: ``B`` dicts with ``boxes`` ``[M_b, 4]`` (normalized cxcywh).
            valid: Optional bool ``[B, N]``, ``False`` for boxes that must not be positive.

        Returns:
            ``B`` pairs ``(box_idx, target_idx)`` of int64 tensors (empty for images without targets).
        """
        if boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != len(targets):
            raise ValueError(
                f"{type(self).__name__}: boxes must be [B, N, 4] with B = {len(targets)} (one per target "
                f"dict), got shape {tuple(boxes.shape)}"
            )
        if valid is not None and valid.shape != boxes.shape[:2]:
            raise ValueError(
                f"{type(self).__name__}: valid must be [B, N] = {tuple(boxes.shape[:2])}, "
                f"got {tuple(valid.shape)}"
            )
        return [
            self.assign_image(boxes[b].detach(), target["boxes"], None if valid is None else valid[b])
            for b, target in enumerate(targets)
        ]


class Stage1Assigner(IoUAssigner):
    """Encoder-proposal assignment: IoU < 0.3 negative, >= 0.7 positive, 256 samples at 1/2 positive, k=4."""

    def __init__(
        self,
        negative_below: float = 0.3,
        positive_from: float = 0.7,
        samples_per_image: int = 256,
        positive_fraction: float = 0.5,
        max_positives_per_target: int = 4,
    ) -> None:
        super().__init__(
            negative_below, positive_from, samples_per_image, positive_fraction, max_positives_per_target
        )


class Stage2Assigner(IoUAssigner):
    """Decoder-query assignment: IoU >= 0.6 positive (else negative), ``num_queries`` samples at 1/4, k=4."""

    def __init__(
        self,
        num_queries: int,
        positive_from: float = 0.6,
        positive_fraction: float = 0.25,
        max_positives_per_target: int = 4,
    ) -> None:
        super().__init__(
            positive_from, positive_from, num_queries, positive_fraction, max_positives_per_target
        )
