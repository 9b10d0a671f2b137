"""Post-processing with fixed output shapes ``[B, K]``, for exported graphs.

The eager post-processors return one variable-length dict per image (a Python list over the
batch); an exported graph needs tensors whose shapes depend only on the input shapes. The
detections here are the eager ones, in the same order, padded to ``K`` per image with score 0
(only NMS leaves fewer than ``K``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from detrlab.evaluation.postprocess import DetrPostProcess
from detrlab.evaluation.sigmoid_postprocess import SigmoidTopKPostProcess
from detrlab.utils.boxes import cxcywh_to_xyxy, normalized_cxcywh_to_absolute_xyxy

__all__ = ["BatchedPostProcess"]


class BatchedPostProcess(nn.Module):
    """Fixed-shape twin of a :class:`DetrPostProcess` or :class:`SigmoidTopKPostProcess`.

    ``forward(pred_logits [B, Q, C'], pred_boxes [B, Q, 4], orig_sizes [B, 2] (h, w))`` returns
    ``scores`` [B, K] (descending; 0 on padding), ``labels`` int64 [B, K] and ``boxes`` [B, K, 4]
    absolute xyxy in original-image pixels.
    """

    def __init__(self, postprocess: nn.Module) -> None:
        super().__init__()
        if isinstance(postprocess, DetrPostProcess):
            self.kind = "softmax"
        elif isinstance(postprocess, SigmoidTopKPostProcess):
            self.kind = "sigmoid"
            self.num_detections = postprocess.num_detections
            self.nms_iou = postprocess.nms_iou
            self.pre_nms_topk = postprocess.pre_nms_topk
        else:
            raise TypeError(
                f"BatchedPostProcess: no fixed-shape version of {type(postprocess).__name__}; export "
                "without the post-processing (postprocess=false) and apply it outside the graph"
            )

    @torch.no_grad()
    def forward(self, logits: Tensor, boxes: Tensor, orig_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        absolute = normalized_cxcywh_to_absolute_xyxy(boxes.float(), orig_sizes.to(boxes.device))
        if self.kind == "softmax":
            scores, labels = logits.float().softmax(-1)[..., :-1].max(-1)
            return scores, labels, absolute
        b, q, c = logits.shape
        probs = logits.float().sigmoid().flatten(1)  # [B, Q*C], index = query * C + class
        k = torch.sym_min(q * c, self.num_detections if self.nms_iou is None else self.pre_nms_topk)
        scores, index = probs.topk(k, dim=1)
        queries, labels = index // c, index % c
        picked = absolute.gather(1, queries[..., None].expand(-1, -1, 4))
        if self.nms_iou is None:
            return scores, labels, picked
        # Class-wise NMS per image as one call: IoU does not change under the per-image scaling to
        # pixels, so NMS runs on the normalized boxes (in [-0.5, 1.5]), each (image, class) group
        # moved to its own cell of the plane (x by class, y by image).
        normalized = cxcywh_to_xyxy(boxes.float()).gather(1, queries[..., None].expand(-1, -1, 4))
        column = labels.to(normalized.dtype)
        row = torch.arange(b, device=logits.device, dtype=normalized.dtype)[:, None].expand_as(column)
        shift = torch.stack((column, row, column, row), dim=-1) * 3.0
        kept_flat = nms((normalized + shift).flatten(0, 1), scores.flatten(), self.nms_iou)
        kept = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        kept = kept.index_fill(0, kept_flat, True).view_as(scores)
        # Survivors keep their (descending) order; the first num_detections of them are the result.
        keep_k = torch.sym_min(self.num_detections, k)
        masked = torch.where(kept, scores, -1.0)
        top_scores, order = masked.topk(keep_k, dim=1)
        # Padding rows (suppressed candidates, in no defined order) are zeroed entirely.
        real = top_scores > 0
        return (
            torch.where(real, top_scores, 0.0),
            torch.where(real, labels.gather(1, order), 0),
            torch.where(real[..., None], picked.gather(1, order[..., None].expand(-1, -1, 4)), 0.0),
        )
