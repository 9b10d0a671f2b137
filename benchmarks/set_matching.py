"""Compare two detectors' outputs as sets of detections, not query by query.

Two implementations with the same weights can emit the same detections in a different query order:
a tie in a top-k or NMS selection (for example DETA's proposal top-up) swaps two queries, and a
position-by-position difference then reports the distance between two unrelated boxes. Here each
image's queries are matched one to one by the Hungarian algorithm (``scipy``) on the L1 distance of
boxes plus logits, and the differences are measured between matched queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class SetDifference:
    """Differences between two output sets after matching.

    Attributes:
        boxes / logits: max |a - b| over matched queries (all images).
        boxes_by_position: max |a - b| of boxes compared query by query, for contrast.
        moved: queries whose match is not the query at the same position (all images).
    """

    boxes: float
    logits: float
    boxes_by_position: float
    moved: int


def match_queries(logits_a, boxes_a, logits_b, boxes_b) -> torch.Tensor:
    """For one image: ``perm`` [Q] such that query ``i`` of a matches query ``perm[i]`` of b.

    Args:
        logits_a, logits_b: [Q, C]; boxes_a, boxes_b: [Q, 4].
    """
    cost = torch.cdist(boxes_a.double(), boxes_b.double(), p=1)
    cost += torch.cdist(logits_a.double(), logits_b.double(), p=1)
    rows, cols = linear_sum_assignment(cost.numpy())
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm


def set_difference(logits_a, boxes_a, logits_b, boxes_b) -> SetDifference:
    """Match the queries of each image and measure the differences (inputs [B, Q, C] and [B, Q, 4])."""
    if logits_a.shape != logits_b.shape or boxes_a.shape != boxes_b.shape:
        raise ValueError(
            f"outputs differ in shape: logits {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}, "
            f"boxes {tuple(boxes_a.shape)} vs {tuple(boxes_b.shape)}"
        )
    box_diff = logit_diff = 0.0
    moved = 0
    for la, ba, lb, bb in zip(logits_a, boxes_a, logits_b, boxes_b):
        perm = match_queries(la, ba, lb, bb)
        moved += int((perm != torch.arange(len(perm))).sum())
        box_diff = max(box_diff, (ba - bb[perm]).abs().max().item())
        logit_diff = max(logit_diff, (la - lb[perm]).abs().max().item())
    by_position = (boxes_a - boxes_b).abs().max().item()
    return SetDifference(box_diff, logit_diff, by_position, moved)
