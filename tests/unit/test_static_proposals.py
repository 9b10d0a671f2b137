"""The fixed-shape (export) proposal selection picks exactly the eager function's tokens."""

from __future__ import annotations

import pytest
import torch

from detrlab.models.proposals import EncoderProposals, encoder_anchors, select_two_stage_proposals
from detrlab.models.static_proposals import select_two_stage_proposals_static


def _inputs(seed: int, shapes, batch: int = 3, padded_width: int = 2):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    mask = torch.zeros(batch, tokens, dtype=torch.bool)
    start = 0
    for h, w in shapes:  # the last image is padded on the right at every level
        level = mask[:, start : start + h * w].view(batch, h, w)
        level[-1, :, max(w - padded_width, 1) :] = True
        start += h * w
    _, valid, level_ids = encoder_anchors(mask, shapes)
    scores = torch.randn(batch, tokens, generator=generator)
    # clustered boxes so that NMS removes a good share of them
    centres = torch.rand(batch, tokens, 2, generator=generator) * 0.3 + 0.35
    sizes = torch.rand(batch, tokens, 2, generator=generator) * 0.2 + 0.2
    return scores, torch.cat((centres, sizes), -1), valid, level_ids


@pytest.mark.parametrize(
    ("shapes", "num_proposals", "pre_nms_topk", "nms_iou"),
    [
        ([(8, 10), (4, 5), (2, 3), (1, 2)], 20, 1000, 0.7),  # fewer tokens per level than pre_nms_topk
        ([(8, 10), (4, 5), (2, 3), (1, 2)], 30, 15, 0.5),  # pre-NMS cut inside levels
        ([(6, 6), (3, 3)], 45, 1000, 0.9),  # k = S: NMS leaves too few, plain top-k fallback
        ([(6, 7), (3, 4), (2, 2)], 9, 7, 0.8),  # quota of 3 per level and top-up
        ([(3, 3), (2, 2), (1, 1)], 2, 1000, 0.7),  # fewer proposals than levels
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_static_selection_equals_the_eager_one(shapes, num_proposals, pre_nms_topk, nms_iou, seed):
    scores, boxes, valid, level_ids = _inputs(seed, shapes)
    args = (EncoderProposals(scores, boxes, valid, level_ids), len(shapes), num_proposals)
    eager = select_two_stage_proposals(*args, use_nms=True, pre_nms_topk=pre_nms_topk, nms_iou=nms_iou)
    static = select_two_stage_proposals_static(*args, pre_nms_topk=pre_nms_topk, nms_iou=nms_iou)
    assert static.shape == eager.shape
    torch.testing.assert_close(static, eager, rtol=0, atol=0)
