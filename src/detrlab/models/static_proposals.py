"""Two-stage proposal selection with NMS written with fixed tensor shapes, for graph export.

:func:`detrlab.models.proposals.select_two_stage_proposals` loops over images, gathers each level's
valid tokens with ``nonzero`` and branches on how many boxes survive NMS: data-dependent shapes and
Python branches that an exported graph (ONNX, ``torch.export``) with a dynamic batch and image size
cannot hold. This module computes the same selection with masks over a fixed candidate set:

- every level contributes its ``min(pre_nms_topk, S)`` best tokens; candidates that are not valid
  tokens of that level (the level has fewer) are marked unreal and kept out of the result;
- one NMS call for the whole batch, each (image, level) group moved to its own square of the plane
  (x offset per level, y offset per image, so coordinates stay small and IoUs exact to float32);
  unreal candidates get a group of their own, so they never suppress a real box;
- per-level quotas, the top-up and the fallback to plain top-k are cumulative sums and a ``where``.

The eager function stays the reference; the test suite checks that both give the same indices.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from detrlab.models.encoder_proposals import EncoderProposals
from detrlab.utils.boxes import cxcywh_to_xyxy

__all__ = ["select_two_stage_proposals_static"]


def select_two_stage_proposals_static(
    proposals: EncoderProposals,
    num_levels: int,
    num_proposals: int,
    pre_nms_topk: int = 1000,
    nms_iou: float = 0.9,
) -> Tensor:
    """The NMS mode of :func:`~detrlab.models.proposals.select_two_stage_proposals`, export-safe.

    Args:
        proposals: the scored encoder tokens.
        num_levels, num_proposals, pre_nms_topk, nms_iou: as in the eager function.

    Returns:
        long [B, min(num_proposals, S)]: token indices, best first.
    """
    scores = proposals.ranking_scores()
    batch, tokens = scores.shape
    k = torch.sym_min(num_proposals, tokens)
    plain = scores.topk(k, dim=1).indices
    per_level = torch.sym_max(k // num_levels, 1)

    # Candidates: [B, N] with N = num_levels * per-level count, grouped by level.
    per_level_candidates = torch.sym_min(pre_nms_topk, tokens)
    levels = torch.arange(num_levels, device=scores.device)
    # [B, L, S]: whether token s is a valid token of level l
    in_level = (proposals.level_ids[None, :] == levels[:, None])[None] & proposals.valid[:, None, :]
    level_scores = scores[:, None, :].masked_fill(~in_level, float("-inf"))
    candidate_scores, candidate_tokens = level_scores.topk(per_level_candidates, dim=2)  # [B, L, n]
    candidate_levels = levels[None, :, None].expand_as(candidate_tokens)
    real = torch.isfinite(candidate_scores)
    candidate_scores = candidate_scores.flatten(1)
    candidate_tokens = candidate_tokens.flatten(1)
    candidate_levels = candidate_levels.flatten(1)
    real = real.flatten(1)

    # One NMS over the batch: group (image, level) shifted by (2 * level, 2 * image); boxes lie in
    # [0, 1], so groups never overlap. Unreal candidates sit in column num_levels.
    boxes_xyxy = cxcywh_to_xyxy(proposals.boxes.detach().float()).clamp(0, 1)
    candidate_boxes = boxes_xyxy.gather(1, candidate_tokens[..., None].expand(-1, -1, 4))  # [B, N, 4]
    column = torch.where(real, candidate_levels, num_levels).to(candidate_boxes.dtype)
    row = torch.arange(batch, device=scores.device, dtype=candidate_boxes.dtype)[:, None].expand_as(column)
    shift = torch.stack((column, row, column, row), dim=-1) * 2.0
    nms_scores = torch.where(real, candidate_scores, torch.finfo(candidate_scores.dtype).min)
    kept_flat = nms((candidate_boxes + shift).flatten(0, 1), nms_scores.flatten(), nms_iou)
    kept = torch.zeros(candidate_scores.numel(), dtype=torch.bool, device=scores.device)
    kept = kept.index_fill(0, kept_flat, True).view_as(real) & real

    # Survivors in score order (batched_nms returns them so in the eager function).
    # (a full top-k, not a stable sort, which ONNX lacks; ties among real scores are left to chance
    # in both functions)
    order = nms_scores.topk(nms_scores.shape[1], dim=1).indices
    survivors = kept.gather(1, order)
    survivor_levels = candidate_levels.gather(1, order)
    survivor_tokens = candidate_tokens.gather(1, order)

    # Within its level, a survivor's rank must be <= per_level; then the best unchosen survivors
    # fill up to k.
    one_hot = (survivor_levels[:, None, :] == levels[None, :, None]) & survivors[:, None, :]  # [B, L, N]
    chosen = (one_hot & (one_hot.cumsum(2) <= per_level)).any(1)
    missing = k - chosen.sum(1, keepdim=True)
    unchosen = survivors & ~chosen
    chosen = chosen | (unchosen & (unchosen.cumsum(1) <= missing))

    # The first k chosen positions, in order (earlier positions get larger keys).
    positions = torch.arange(chosen.shape[1], 0, -1, device=scores.device)
    first_chosen = torch.where(chosen, positions[None, :], 0).topk(k, dim=1).indices
    selected = survivor_tokens.gather(1, first_chosen)
    enough = survivors.sum(1, keepdim=True) >= k
    return torch.where(enough, selected, plain)
