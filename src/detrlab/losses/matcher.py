"""Hungarian matching between a detector's query predictions and the ground-truth boxes of each image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from detrlab.utils.boxes import cxcywh_to_xyxy

__all__ = ["CLASS_COSTS", "HungarianMatcher"]

#: Supported ways of scoring how well a query's class prediction fits a target's class.
CLASS_COSTS = ("softmax", "focal")


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets that minimizes a weighted matching cost.

    The cost of pairing query ``q`` with target ``t`` is::

        cost_class * class_cost(q, t) + cost_bbox * L1(box_q, box_t) + cost_giou * (-GIoU(box_q, box_t))

    with L1 on normalized (cx, cy, w, h) boxes and GIoU on the corresponding (x0, y0, x1, y1) boxes.
    Queries left unassigned are meant to predict "no object".

    Args:
        cost_class: Weight of the classification cost.
        cost_bbox: Weight of the L1 box cost.
        cost_giou: Weight of the (negative) generalized-IoU cost.
        class_cost: ``"softmax"``: ``-softmax(logits)[target class]``, for logits with a trailing
            "no object" column (DETR). ``"focal"``: the focal-loss cost of calling the target class
            present minus the cost of calling it absent, on sigmoid probabilities (logits with no
            "no object" column, as in Deformable DETR).
        focal_alpha: Positive/negative balance of the focal cost (only used by ``"focal"``).
        focal_gamma: Focusing exponent of the focal cost (only used by ``"focal"``).
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        class_cost: str = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError(
                "HungarianMatcher: cost_class, cost_bbox and cost_giou are all 0, so every assignment "
                "would cost the same; give at least one of them a non-zero weight"
            )
        if class_cost not in CLASS_COSTS:
            raise ValueError(
                f"HungarianMatcher: class_cost={class_cost!r} is unknown; use one of {CLASS_COSTS}"
            )
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.class_cost = class_cost
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"class_cost={self.class_cost!r}"
        )

    def classification_cost(self, logits: Tensor, target_labels: Tensor) -> Tensor:
        """Class part of the cost (unweighted).

        Args:
            logits: ``[P, C']`` logits of ``P`` queries.
            target_labels: ``[T]`` int64 target classes.

        Returns:
            ``[P, T]`` cost, lower is a better fit.
        """
        if self.class_cost == "softmax":
            # -p(target class); the constant 1 of "1 - p" does not change the assignment
            return -logits.softmax(-1)[:, target_labels]
        logits = logits[:, target_labels]
        prob = logits.sigmoid()
        # -log(p) = softplus(-x) and -log(1 - p) = softplus(x), stable for large |x|
        pos = self.focal_alpha * (1 - prob) ** self.focal_gamma * F.softplus(-logits)
        neg = (1 - self.focal_alpha) * prob**self.focal_gamma * F.softplus(logits)
        return pos - neg

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match every image's queries to its targets.

        Args:
            outputs: ``pred_logits`` ``[B, Q, C']`` and ``pred_boxes`` ``[B, Q, 4]`` (normalized cxcywh).
                Other keys are ignored.
            targets: ``B`` dicts with ``labels`` int64 ``[N_b]`` and ``boxes`` ``[N_b, 4]`` (normalized
                cxcywh).

        Returns:
            ``B`` pairs ``(query_indices, target_indices)``, both int64 CPU tensors of length
            ``min(Q, N_b)``; ``query_indices`` is sorted ascending. Images without targets get two
            empty tensors.
        """
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch_size, num_queries = logits.shape[:2]
        if len(targets) != batch_size:
            raise ValueError(
                f"HungarianMatcher: got {len(targets)} target dicts for a batch of {batch_size} images; "
                "pass exactly one target dict per image"
            )
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            return [_empty_match() for _ in targets]

        # One cost matrix for the whole batch ([B*Q, sum N_b]): a few large kernels instead of B small
        # ones. Float32 so that half-precision outputs do not produce ties or overflow.
        flat_logits = logits.flatten(0, 1).float()
        flat_boxes = pred_boxes.flatten(0, 1).float()
        target_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(flat_boxes)

        cost = self.cost_class * self.classification_cost(flat_logits, target_labels)
        cost = cost + self.cost_bbox * torch.cdist(flat_boxes, target_boxes, p=1)
        cost = cost - self.cost_giou * generalized_box_iou(
            cxcywh_to_xyxy(flat_boxes), cxcywh_to_xyxy(target_boxes)
        )
        # The solver needs the costs on the host (the one device sync here); the check reads that
        # copy through numpy, which costs no further sync.
        cost = cost.view(batch_size, num_queries, -1).cpu()
        if not np.isfinite(cost.numpy()).all():
            raise ValueError(
                "HungarianMatcher: the matching cost has NaN/inf entries, so the predictions "
                "(pred_logits or pred_boxes) or the target boxes contain NaN/inf or degenerate values; "
                "check for a diverged model (lower the learning rate, enable gradient clipping) or "
                "invalid target boxes"
            )

        # Image b's targets are the b-th column block; its queries are row block b.
        per_image = cost.split(sizes, dim=-1)
        return [
            _solve(block[b]) if size > 0 else _empty_match()
            for b, (block, size) in enumerate(zip(per_image, sizes))
        ]


def _solve(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost assignment of a ``[Q, N]`` cost matrix, as int64 index tensors."""
    query_idx, target_idx = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64)


def _empty_match() -> tuple[Tensor, Tensor]:
    return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
