"""The fixed-size, single-``nms`` proposal selection equals the per-image, per-level loop it replaced."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from detrlab.models.proposals import EncoderProposals, select_two_stage_proposals
from detrlab.utils.boxes import cxcywh_to_xyxy


def _per_image_selection(scores, boxes, valid, level_ids, num_levels, num_proposals, pre_nms_topk, nms_iou):
    """The straightforward version: per image, per-level top-k of the valid tokens, NMS per level,
    a per-level cap, a top-up with the best remaining survivors, plain top-k when too few survive."""
    scores = scores.float().masked_fill(~valid, float("-inf"))
    k = min(num_proposals, scores.shape[1])
    plain = scores.topk(k, dim=1).indices
    boxes_xyxy = cxcywh_to_xyxy(boxes.float()).clamp(0, 1)
    per_level = max(k // num_levels, 1)
    selected = []
    for b in range(scores.shape[0]):
        candidates = []
        for lvl in range(num_levels):
            idx = ((level_ids == lvl) & valid[b]).nonzero()[:, 0]
            candidates.append(idx[scores[b, idx].topk(min(pre_nms_topk, idx.numel())).indices])
        candidates = torch.cat(candidates)
        keep = candidates[
            batched_nms(boxes_xyxy[b, candidates], scores[b, candidates], level_ids[candidates], nms_iou)
        ]
        if keep.numel() < k:
            selected.append(plain[b])
            continue
        one_hot = level_ids[keep][None] == torch.arange(num_levels)[:, None]
        chosen = (one_hot & (one_hot.cumsum(1) <= per_level)).any(0)
        missing = k - int(chosen.sum())
        if missing > 0:
            chosen[(~chosen).nonzero()[:missing, 0]] = True
        selected.append(keep[chosen][:k])
    return torch.stack(selected)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nms_calls", ["per_group", "single_call"])
def test_selection_equals_per_image_loop(seed, nms_calls, monkeypatch):
    if nms_calls == "single_call":
        # the accelerator path (one shifted nms for every group), taken where values are not free
        monkeypatch.setattr("detrlab.models.proposals.values_are_free", lambda tensor: False)
    g = torch.Generator().manual_seed(seed)
    shapes = [(12, 15), (6, 8), (3, 4), (2, 2)]
    level_ids = torch.cat([torch.full((h * w,), lvl) for lvl, (h, w) in enumerate(shapes)])
    s = len(level_ids)
    batch = 3
    # small boxes over the image: NMS suppresses some, and enough survive for the cap and top-up
    # to matter; padding on two images
    centres = torch.rand(batch, s, 2, generator=g) * 0.8 + 0.1
    sizes = torch.rand(batch, s, 2, generator=g) * 0.15 + 0.03
    boxes = torch.cat([centres, sizes], -1)
    scores = torch.randn(batch, s, generator=g)
    valid = torch.rand(batch, s, generator=g) > torch.tensor([0.0, 0.3, 0.9])[:, None]
    nms_mattered = 0
    for num_proposals, pre_nms_topk, iou in [(40, 50, 0.5), (60, 1000, 0.7), (20, 10, 0.3), (300, 1000, 0.9)]:
        args = (EncoderProposals(scores, boxes, valid, level_ids), len(shapes), num_proposals)
        ours = select_two_stage_proposals(*args, use_nms=True, pre_nms_topk=pre_nms_topk, nms_iou=iou)
        with_sizes = select_two_stage_proposals(
            *args,
            use_nms=True,
            pre_nms_topk=pre_nms_topk,
            nms_iou=iou,
            level_sizes=[h * w for h, w in shapes],
        )
        expected = _per_image_selection(scores, boxes, valid, level_ids, *args[1:], pre_nms_topk, iou)
        assert ours.tolist() == expected.tolist(), (num_proposals, pre_nms_topk, iou)
        assert with_sizes.tolist() == expected.tolist()
        plain = select_two_stage_proposals(*args)
        nms_mattered += sum(bool((ours[b] != plain[b]).any()) for b in range(batch))
    assert nms_mattered >= 4  # the NMS path, not only its plain top-k fallback, was compared
