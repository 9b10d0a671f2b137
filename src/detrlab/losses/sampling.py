"""Building blocks of IoU-based one-to-many assignment: threshold matching, subsampling, top-k per target.

Labels used throughout: ``1`` positive (foreground), ``0`` negative (background), ``-1`` ignored. They are
match *states*, independent of the object classes, so any number of classes works (the class of a
positive is looked up from its target afterwards).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "IGNORE",
    "NEGATIVE",
    "POSITIVE",
    "label_by_iou",
    "subsample_labels",
    "subsample_masks",
    "topk_per_target",
    "topk_per_target_from_counts",
]

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


def label_by_iou(
    iou: Tensor,
    thresholds: Sequence[float],
    labels: Sequence[int],
    allow_low_quality_matches: bool = True,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Give every prediction its best target and a positive / negative / ignore label from that IoU.

    A prediction whose best IoU lies in ``[thresholds[i-1], thresholds[i])`` (with ``-inf`` and ``+inf``
    added at the ends) gets ``labels[i]``. With ``allow_low_quality_matches`` every prediction that
    has the highest IoU of some target (ties included) is made positive as well, so that each target
    keeps at least one positive even when nothing reaches the upper threshold; targets that overlap
    no prediction at all (best IoU 0) get no such match, because "best" would then mean every
    prediction. A low-quality positive keeps the index of *its own* best target.

    Args:
        iou: ``[M, N]`` IoU of ``M`` targets with ``N`` predictions, values in ``[0, 1]``.
        thresholds: Ascending IoU thresholds, e.g. ``(0.3, 0.7)``.
        labels: ``len(thresholds) + 1`` values in ``{-1, 0, 1}``, e.g. ``(0, -1, 1)``.
        allow_low_quality_matches: Add the best prediction(s) of each target as positives.
        valid: Optional bool ``[N]``; ``False`` predictions (padding, invalid proposals) are labelled
            ``-1`` and never take part in a match.

    Returns:
        ``(matched_target, match_label)``: int64 ``[N]`` index of each prediction's best target (0
        when ``M == 0``) and int64 ``[N]`` labels. With no targets every valid prediction gets
        ``labels[0]``.
    """
    if len(labels) != len(thresholds) + 1:
        raise ValueError(
            f"label_by_iou: got {len(thresholds)} thresholds and {len(labels)} labels; "
            "pass exactly one label more than thresholds"
        )
    if list(thresholds) != sorted(thresholds):
        raise ValueError(f"label_by_iou: thresholds {list(thresholds)} must be in ascending order")
    if any(label not in (POSITIVE, NEGATIVE, IGNORE) for label in labels):
        raise ValueError(f"label_by_iou: labels {list(labels)} must each be -1 (ignore), 0 or 1")
    num_targets, num_predictions = iou.shape
    if valid is not None:
        # -1 is below every threshold and below every real IoU, so invalid predictions are nobody's best.
        iou = iou.masked_fill(~valid[None, :], -1.0)
    if num_targets == 0:
        matched_target = torch.zeros(num_predictions, dtype=torch.int64, device=iou.device)
        match_label = torch.full_like(matched_target, labels[0])
    else:
        best_iou, matched_target = iou.max(dim=0)
        # Bucket of each prediction's best IoU: 0 below thresholds[0], ..., len(thresholds) at the top.
        bounds = torch.tensor(list(thresholds), dtype=best_iou.dtype, device=iou.device)
        bucket = torch.bucketize(best_iou, bounds, right=True)
        match_label = torch.tensor(list(labels), dtype=torch.int64, device=iou.device)[bucket]
        if allow_low_quality_matches:
            best_per_target = iou.max(dim=1, keepdim=True).values
            is_best = (iou == best_per_target) & (best_per_target > 0)
            # masked_fill, not match_label[mask] = ...: boolean-index assignment syncs on an accelerator
            match_label = match_label.masked_fill(is_best.any(dim=0), POSITIVE)
    if valid is not None:
        match_label = match_label.masked_fill(~valid, IGNORE)
    return matched_target, match_label


def subsample_masks(
    match_label: Tensor,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Randomly pick at most ``num_samples`` labelled predictions with a bounded share of positives.

    At most ``int(num_samples * positive_fraction)`` positives are kept; the remaining slots are filled
    with negatives (as many as exist). Ignored predictions (``-1``) are never picked. Every positive
    (negative) subset of the allowed size is equally likely.

    Works on fixed-size tensors (random keys ranked by one sort per label) so that nothing waits for
    the device: the counts of positives and negatives never leave it.

    Args:
        match_label: int ``[N]`` labels from :func:`label_by_iou`.
        num_samples: Total number of predictions to keep.
        positive_fraction: Largest share of positives among the ``num_samples``.
        generator: Optional random generator on ``match_label``'s device (for reproducible tests).

    Returns:
        ``(positive_mask, negative_mask)``: bool ``[N]`` each, the picked positives and negatives.
    """
    if num_samples < 0 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(
            f"subsample_labels: need num_samples >= 0 and 0 <= positive_fraction <= 1, got "
            f"num_samples={num_samples}, positive_fraction={positive_fraction}"
        )
    is_positive, is_negative = match_label == POSITIVE, match_label == NEGATIVE
    keys = torch.rand(match_label.shape, generator=generator, device=match_label.device)
    positive_rank = _random_rank(keys, is_positive)
    negative_rank = _random_rank(keys, is_negative)
    positive = is_positive & (positive_rank < int(num_samples * positive_fraction))
    negative = is_negative & (negative_rank < num_samples - positive.sum())
    return positive, negative


def _random_rank(keys: Tensor, members: Tensor) -> Tensor:
    """long ``[N]``: the rank of each member's key among the members' keys (non-members rank after)."""
    order = keys.masked_fill(~members, 2.0).argsort()  # keys lie in [0, 1)
    return torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))


def subsample_labels(
    match_label: Tensor,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`subsample_masks` as index tensors (two device syncs: their lengths).

    Returns:
        ``(positive_idx, negative_idx)``: int64 indices into ``[N]``, ascending.
    """
    positive, negative = subsample_masks(match_label, num_samples, positive_fraction, generator)
    return positive.nonzero().squeeze(1), negative.nonzero().squeeze(1)


def topk_per_target(prediction_idx: Tensor, target_idx: Tensor, iou: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Replace each target's sampled positives by its best predictions by IoU, at most ``k`` of them.

    A target with ``c`` sampled positives gets its ``min(c, k)`` highest-IoU predictions over *all*
    predictions (not only the sampled ones), so random sampling decides how many positives a target
    gets and IoU rank decides which. A prediction may thereby appear for two targets.

    Args:
        prediction_idx: int64 ``[P]`` sampled positive predictions.
        target_idx: int64 ``[P]`` their matched targets.
        iou: ``[M, N]`` IoU of targets with predictions (invalid predictions set below 0, so they rank
            last).
        k: Largest number of positives per target.

    Returns:
        ``(prediction_idx, target_idx)``: int64, grouped by ascending target, best IoU first.
    """
    if k < 1:
        raise ValueError(f"topk_per_target: k must be >= 1, got {k}")
    if target_idx.numel() == 0:
        return prediction_idx, target_idx
    counts = torch.zeros(iou.shape[0], dtype=torch.int64, device=iou.device)
    counts.scatter_add_(0, target_idx.to(iou.device), torch.ones_like(target_idx, device=iou.device))
    return topk_per_target_from_counts(counts, iou, k)


def topk_per_target_from_counts(counts: Tensor, iou: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each target ``t``'s ``min(counts[t], k)`` highest-IoU predictions (see :func:`topk_per_target`).

    One device sync: the length of the result, read by a single ``nonzero``.

    Args:
        counts: int64 ``[M]`` sampled positives per target.
        iou: ``[M, N]`` IoU of targets with predictions.
        k: Largest number of positives per target.

    Returns:
        ``(prediction_idx, target_idx)``: int64, grouped by ascending target, best IoU first.
    """
    if k < 1:
        raise ValueError(f"topk_per_target: k must be >= 1, got {k}")
    k = min(k, iou.shape[1])
    best = iou.topk(k, dim=1).indices  # [M, k], best first
    keep = torch.arange(k, device=counts.device)[None, :] < counts[:, None]
    target_idx, rank = keep.nonzero(as_tuple=True)  # row-major: grouped by target, best first
    return best[target_idx, rank], target_idx
