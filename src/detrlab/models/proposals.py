"""Two-stage proposals: one anchor box per encoder token, their position encoding, and top-k / NMS selection."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detrlab.models.static_proposals import select_two_stage_proposals_static
from detrlab.utils.boxes import cxcywh_to_xyxy

log = logging.getLogger(__name__)

__all__ = ["encoder_anchors", "proposal_position_embedding", "select_two_stage_proposals"]

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
    scores: Tensor,
    boxes: Tensor,
    valid: Tensor,
    level_ids: Tensor,
    num_levels: int,
    num_proposals: int,
    use_nms: bool = False,
    pre_nms_topk: int = 1000,
    nms_iou: float = 0.9,
) -> Tensor:
    """Indices of the encoder tokens whose boxes become the decoder's queries.

    Plain mode keeps the ``num_proposals`` best scores. NMS mode (DETA), per image: the
    ``pre_nms_topk`` best tokens of every level, NMS at ``nms_iou`` within each level, then at most
    ``num_proposals // num_levels`` per level in score order, topped up with the best remaining
    survivors; when fewer than ``num_proposals`` survive NMS it falls back to plain top-k.
    Invalid tokens are never chosen while valid ones remain.

    Args:
        scores: [B, S] objectness logits.
        boxes: [B, S, 4] sigmoid cxcywh boxes (only read in NMS mode).
        valid: bool [B, S].
        level_ids: long [S].
        num_levels: number of levels.
        num_proposals: wanted proposals; capped at S so that small images work.
        use_nms, pre_nms_topk, nms_iou: see above.

    Returns:
        long [B, min(num_proposals, S)], best first (NMS mode: survivors in score order).
    """
    scores = scores.detach().float().masked_fill(~valid, float("-inf"))
    k = min(num_proposals, scores.shape[1])
    plain = scores.topk(k, dim=1).indices
    if not use_nms:
        return plain
    if torch.compiler.is_exporting():
        # The per-image loop below has data-dependent shapes; exported graphs take the
        # fixed-shape equivalent (same indices, checked by the tests).
        return select_two_stage_proposals_static(
            scores, boxes, valid, level_ids, num_levels, num_proposals, pre_nms_topk, nms_iou
        )
    boxes_xyxy = cxcywh_to_xyxy(boxes.detach().float()).clamp(0, 1)
    per_level = max(k // num_levels, 1)
    selected = []
    for b in range(scores.shape[0]):
        candidates = []
        for lvl in range(num_levels):
            in_level = (level_ids == lvl) & valid[b]
            idx = in_level.nonzero()[:, 0]
            top = scores[b, idx].topk(min(pre_nms_topk, idx.numel())).indices
            candidates.append(idx[top])
        candidates = torch.cat(candidates)
        keep = candidates[
            batched_nms(boxes_xyxy[b, candidates], scores[b, candidates], level_ids[candidates], nms_iou)
        ]
        if keep.numel() < k:
            log.debug("only %d proposals survive NMS (< %d): using plain top-k", keep.numel(), k)
            selected.append(plain[b])
            continue
        # Rank of every survivor within its level (survivors are sorted by score).
        one_hot = level_ids[keep][None] == torch.arange(num_levels, device=keep.device)[:, None]
        chosen = (one_hot & (one_hot.cumsum(1) <= per_level)).any(0)
        missing = k - int(chosen.sum())
        if missing > 0:
            chosen[(~chosen).nonzero()[:missing, 0]] = True
        selected.append(keep[chosen][:k])
    return torch.stack(selected)
