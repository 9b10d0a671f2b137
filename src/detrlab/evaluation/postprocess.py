"""Turn raw DETR outputs into scored, labelled boxes in original-image pixels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detrlab.utils.boxes import normalized_cxcywh_to_absolute_xyxy

__all__ = ["DetrPostProcess"]


class DetrPostProcess(nn.Module):
    """Best class and its probability for every query of a softmax ("no object" column) detector.

    Every query yields one detection (``K = Q``); no thresholding or NMS, since COCO AP ranks
    detections by score and DETR's set prediction does not produce duplicates by design.
    """

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], orig_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Convert a batch of predictions.

        Args:
            outputs: ``pred_logits`` ``[B, Q, C + 1]`` (last column = "no object") and ``pred_boxes``
                ``[B, Q, 4]`` normalized cxcywh. Other keys are ignored.
            orig_sizes: ``[B, 2]`` (h, w) of the original images, any numeric dtype.

        Returns:
            ``B`` dicts: ``scores`` ``[Q]`` (probability of the best object class), ``labels`` int64
            ``[Q]`` in ``0..C-1``, ``boxes`` ``[Q, 4]`` absolute xyxy pixels in the original image.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if orig_sizes.shape != (logits.shape[0], 2):
            raise ValueError(
                f"DetrPostProcess: orig_sizes must be [B, 2] (h, w) with B={logits.shape[0]}, "
                f"got shape {tuple(orig_sizes.shape)}"
            )
        # The softmax includes "no object" so that a query sure of being empty gets a low score.
        probs = logits.float().softmax(-1)[..., :-1]
        scores, labels = probs.max(-1)
        absolute = normalized_cxcywh_to_absolute_xyxy(boxes.float(), orig_sizes.to(boxes.device))
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, absolute)]
