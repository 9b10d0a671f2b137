"""Two-stage proposals: one anchor box per encoder token, their position encoding, and top-k / NMS selection."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import nms

from detrlab.models.encoder_proposals import EncoderProposals
from detrlab.models.static_proposals import select_two_stage_proposals_static
from detrlab.utils.boxes import cxcywh_to_xyxy
from detrlab.utils.host_sync import values_are_free

log = logging.getLogger(__name__)

__all__ = ["EncoderProposals", "encoder_anchors", "proposal_position_embedding", "select_two_stage_proposals"]

# Anchor coordinates outside (low, high) would have huge inverse-sigmoid values; such tokens are invalid.
_VALID_RANGE = (0.01, 0.99)


def encoder_anchors(
    padding_mask: Tensor, spatial_shapes: Sequence[tuple[int, int]], base_size: float = 0.05
) -> tuple[Tensor, Tensor, Tensor]:
    """A square anchor centred on every encoder token, of side ``base_size * 2**level``.

    Centres and sizes are normalized by the valid (unpadded) extent of each image and level.

    Args:
        padding_mask: bool [B, S], True on padded tokens (levels flattened and concatenated).
        spatial_shapes: (h_l, w_l) of each level.
        base_size: side of the finest level's anchors, relative to the image.

    Returns:
        ``anchors_unact`` [B, S, 4]: inverse-sigmoid cxcywh anchors, ``+inf`` on invalid tokens;
        ``valid`` bool [B, S]: not padding and all coordinates in (0.01, 0.99);
        ``level_ids`` long [S]: the level of every token.
    """
    b = padding_mask.shape[0]
    anchors, level_ids, start = [], [], 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        mask = padding_mask[:, start : start + h * w].view(b, h, w)
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=mask.device),
            torch.arange(w, dtype=torch.float32, device=mask.device),
            indexing="ij",
        )
        centres = torch.stack((xs, ys), -1)[None] + 0.5  # [1, h, w, 2]
        centres = centres / torch.stack((valid_w, valid_h), -1).view(b, 1, 1, 2)
        sizes = torch.full_like(centres, base_size * 2.0**lvl)
        anchors.append(torch.cat((centres, sizes), -1).view(b, h * w, 4))
        level_ids.append(torch.full((h * w,), lvl, dtype=torch.long, device=mask.device))
        start += h * w
    anchors = torch.cat(anchors, 1)
    low, high = _VALID_RANGE
    valid = ((anchors > low) & (anchors < high)).all(-1) & ~padding_mask
    anchors_unact = torch.log(anchors / (1 - anchors)).masked_fill(~valid[..., None], float("inf"))
    return anchors_unact, valid, torch.cat(level_ids)


def proposal_position_embedding(
    boxes_unact: Tensor, num_pos_feats: int = 128, temperature: float = 10000
) -> Tensor:
    """Sine encoding of each sigmoid-space box coordinate (cx, cy, w, h), concatenated.

    Args:
        boxes_unact: [B, K, 4] inverse-sigmoid boxes.

    Returns:
        [B, K, 4 * num_pos_feats]: for each coordinate, interleaved sin/cos at ``num_pos_feats / 2``
        geometric frequencies of ``2 * pi * sigmoid(coordinate)``.
    """
    exponent = 2 * torch.div(torch.arange(num_pos_feats, device=boxes_unact.device), 2, rounding_mode="floor")
    dim_t = temperature ** (exponent.float() / num_pos_feats)
    angles = boxes_unact.sigmoid()[..., None] * (2 * math.pi) / dim_t  # [B, K, 4, F]
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(2)


def select_two_stage_proposals(
    proposals: EncoderProposals,
    num_levels: int,
    num_proposals: int,
    use_nms: bool = False,
    pre_nms_topk: int = 1000,
    nms_iou: float = 0.9,
    level_sizes: Sequence[int] | None = None,
) -> Tensor:
    """Indices of the encoder tokens whose boxes become the decoder's queries.

    Plain mode keeps the ``num_proposals`` best scores. NMS mode (DETA), per image: the
    ``pre_nms_topk`` best tokens of every level, NMS at ``nms_iou`` within each level, then at most
    ``num_proposals // num_levels`` per level in score order, topped up with the best remaining
    survivors; when fewer than ``num_proposals`` survive NMS it falls back to plain top-k.
    Invalid tokens are never chosen while valid ones remain.

    The NMS mode works on fixed-size tensors, with a single ``nms`` call for all images and levels,
    so that on an accelerator it waits for the device once (that call's output length) instead of
    once per image and level.

    Args:
        proposals: the scored encoder tokens.
        num_levels: number of levels.
        num_proposals: wanted proposals; capped at S so that small images work.
        use_nms, pre_nms_topk, nms_iou: see above.
        level_sizes: tokens per level (host ints); counted from ``level_ids`` (one device sync)
            when not given.

    Returns:
        long [B, min(num_proposals, S)], best first (NMS mode: survivors in score order).
    """
    scores = proposals.ranking_scores()
    k = min(num_proposals, scores.shape[1])
    plain = scores.topk(k, dim=1).indices
    if not use_nms:
        return plain
    if torch.compiler.is_exporting():
        # Exported graphs take the fixed-shape equivalent (same indices, checked by the tests): the
        # candidate counts below are read as Python ints, which would fix the image size.
        return select_two_stage_proposals_static(proposals, num_levels, num_proposals, pre_nms_topk, nms_iou)
    level_ids = proposals.level_ids
    if level_sizes is None:
        level_sizes = torch.bincount(level_ids, minlength=num_levels).tolist()
    candidates, candidate_ok = _pre_nms_candidates(
        scores, proposals.valid, level_ids, level_sizes, pre_nms_topk
    )
    if candidates.shape[1] < k:
        log.debug("only %d pre-NMS candidates (< %d): using plain top-k", candidates.shape[1], k)
        return plain
    candidate_scores = scores.gather(1, candidates)
    candidate_levels = level_ids[candidates]
    survived = _nms_survivors(
        proposals.boxes, candidates, candidate_scores, candidate_levels, candidate_ok, num_levels, nms_iou
    )
    selected = _cap_per_level(candidates, candidate_scores, candidate_levels, survived, num_levels, k)
    enough = survived.sum(1, keepdim=True) >= k
    return torch.where(enough, selected, plain)


def _pre_nms_candidates(
    scores: Tensor, valid: Tensor, level_ids: Tensor, level_sizes: Sequence[int], pre_nms_topk: int
) -> tuple[Tensor, Tensor]:
    """The ``min(pre_nms_topk, size_l)`` best tokens of every level, concatenated.

    Returns:
        ``candidates`` long [B, C] token indices and ``candidate_ok`` bool [B, C]: False where the
        slot holds no valid token of its level (levels with fewer valid tokens than slots).
    """
    candidates, candidate_ok = [], []
    for lvl, size in enumerate(level_sizes):
        if size == 0:
            continue
        in_level = level_ids == lvl
        top = scores.masked_fill(~in_level, float("-inf")).topk(min(pre_nms_topk, int(size)), dim=1).indices
        candidates.append(top)
        candidate_ok.append(valid.gather(1, top) & in_level[top])
    return torch.cat(candidates, 1), torch.cat(candidate_ok, 1)


def _nms_survivors(
    boxes: Tensor,
    candidates: Tensor,
    candidate_scores: Tensor,
    candidate_levels: Tensor,
    candidate_ok: Tensor,
    num_levels: int,
    nms_iou: float,
) -> Tensor:
    """bool [B, C]: the valid candidates that survive NMS within their (image, level).

    On an accelerator, one ``nms`` call: each (image, level) group is shifted by twice its index, which separates the
    groups because the boxes are clamped to [0, 1]. ``batched_nms`` would do the same shift only for
    small inputs (it loops over the groups, syncing per group, above 20000 coordinates on CUDA) and
    in float32, where a shift of up to ``2 * B * L`` would round the coordinates; float64 keeps them
    as they are.
    """
    b, c = candidates.shape
    boxes_xyxy = cxcywh_to_xyxy(boxes.detach().double()).clamp(0, 1)
    candidate_boxes = boxes_xyxy.gather(1, candidates[..., None].expand(-1, -1, 4))
    image = torch.arange(b, device=candidates.device)[:, None]
    # Every invalid slot goes into one extra group, where it can suppress no valid candidate.
    group = torch.where(candidate_ok, image * num_levels + candidate_levels, b * num_levels)
    candidate_boxes = candidate_boxes.masked_fill(~candidate_ok[..., None], 0.0)
    flat_scores = candidate_scores.double().view(-1)
    survived = torch.zeros(b * c, dtype=torch.bool, device=candidates.device)
    if values_are_free(candidates):
        # Nothing waits for a device here, and greedy NMS costs the square of its box count: one
        # call per (image, level) group does the sum of the groups' squares instead (same survivors).
        flat_boxes, flat_group = candidate_boxes.view(-1, 4), group.view(-1)
        for g in range(b * num_levels):
            members = (flat_group == g).nonzero().squeeze(1)
            if members.numel():
                survived[members[nms(flat_boxes[members], flat_scores[members], nms_iou)]] = True
        return survived.view(b, c) & candidate_ok
    shifted = candidate_boxes + 2.0 * group[..., None]
    keep = nms(shifted.view(-1, 4), flat_scores, nms_iou)
    survived.index_fill_(0, keep, True)
    return survived.view(b, c) & candidate_ok


def _cap_per_level(
    candidates: Tensor,
    candidate_scores: Tensor,
    candidate_levels: Tensor,
    survived: Tensor,
    num_levels: int,
    k: int,
) -> Tensor:
    """long [B, k]: at most ``k // num_levels`` survivors per level in score order, topped up with the
    best remaining survivors, returned in score order. Meaningful where at least ``k`` survived."""
    per_level = max(k // num_levels, 1)
    ranked_scores = candidate_scores.masked_fill(~survived, float("-inf"))
    order = ranked_scores.sort(dim=1, descending=True, stable=True).indices  # survivors first
    alive = survived.gather(1, order)
    levels = candidate_levels.gather(1, order)
    # Rank of every survivor within its level: [B, L, C] one-hot over levels, cumulated along C.
    one_hot = (levels[:, None, :] == torch.arange(num_levels, device=levels.device)[None, :, None]) & alive[
        :, None
    ]
    chosen = (one_hot & (one_hot.cumsum(2) <= per_level)).any(1)
    missing = k - chosen.sum(1, keepdim=True)
    spare = alive & ~chosen
    chosen = chosen | (spare & (spare.cumsum(1) <= missing))
    # The chosen positions in score order: a stable sort puts the chosen (0) before the rest (1).
    first = (~chosen).to(torch.uint8).sort(dim=1, stable=True).indices[:, :k]
    return candidates.gather(1, order.gather(1, first))
