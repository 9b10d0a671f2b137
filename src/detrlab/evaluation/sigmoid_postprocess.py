"""Post-processing for sigmoid-logit detectors (Deformable DETR, DETA): top-k over query x class, optional NMS."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detrlab.utils.boxes import normalized_cxcywh_to_absolute_xyxy

__all__ = ["SigmoidTopKPostProcess"]


class SigmoidTopKPostProcess(nn.Module):
    """Best (query, class) pairs by sigmoid score; a query may yield several classes.

    Without NMS (Deformable DETR): the ``num_detections`` best pairs. With ``nms_iou`` (DETA, whose
    one-to-many training produces duplicates): the ``pre_nms_topk`` best pairs (capped at Q*C),
    class-wise NMS at ``nms_iou``, then the ``num_detections`` best survivors. No score threshold:
    COCO AP ranks by score.

    Args:
        num_detections: detections kept per image (capped at the number of pairs / survivors).
        nms_iou: IoU threshold of the class-wise NMS, or ``None`` for no NMS.
        pre_nms_topk: pairs fed to NMS.
    """

    def __init__(
        self, num_detections: int = 100, nms_iou: float | None = None, pre_nms_topk: int = 10000
    ) -> None:
        super().__init__()
        if num_detections < 1 or pre_nms_topk < 1:
            raise ValueError(
                f"num_detections and pre_nms_topk must be >= 1, got {num_detections} and {pre_nms_topk}"
            )
        if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1] or null, got {nms_iou}")
        self.num_detections = num_detections
        self.nms_iou = nms_iou
        self.pre_nms_topk = pre_nms_topk

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], orig_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Convert a batch of predictions.

        Args:
            outputs: ``pred_logits`` [B, Q, C] sigmoid logits and ``pred_boxes`` [B, Q, 4] normalized cxcywh.
            orig_sizes: [B, 2] (h, w) of the original images.

        Returns:
            B dicts: ``scores`` [K] (descending), ``labels`` int64 [K] in 0..C-1, ``boxes`` [K, 4]
            absolute xyxy in the original image.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        b, q, c = logits.shape
        if orig_sizes.shape != (b, 2):
            raise ValueError(
                f"SigmoidTopKPostProcess: orig_sizes must be [B, 2] (h, w) with B={b}, got {tuple(orig_sizes.shape)}"
            )
        probs = logits.float().sigmoid().flatten(1)  # [B, Q*C], index = query * C + class
        absolute = normalized_cxcywh_to_absolute_xyxy(boxes.float(), orig_sizes.to(boxes.device))
        k = min(q * c, self.num_detections if self.nms_iou is None else self.pre_nms_topk)
        scores, index = probs.topk(k, dim=1)
        queries, labels = index // c, index % c
        results = []
        for img in range(b):
            img_boxes = absolute[img, queries[img]]
            img_scores, img_labels = scores[img], labels[img]
            if self.nms_iou is not None:
                keep = batched_nms(img_boxes, img_scores, img_labels, self.nms_iou)[: self.num_detections]
                img_boxes, img_scores, img_labels = img_boxes[keep], img_scores[keep], img_labels[keep]
            results.append({"scores": img_scores, "labels": img_labels, "boxes": img_boxes})
        return results
