"""Two-stage proposals: encoder anchors, their position encoding, top-k and DETA's NMS selection."""

from __future__ import annotations

import math

import torch

from detrlab.models.proposals import (
    EncoderProposals,
    encoder_anchors,
    proposal_position_embedding,
    select_two_stage_proposals,
)


def test_encoder_anchors_centres_sizes_and_validity():
    shapes = [(2, 4), (1, 2)]
    mask = torch.zeros(2, 10, dtype=torch.bool)
    # image 1: the right half of every level is padding
    mask[1, [2, 3, 6, 7, 9]] = True
    anchors_unact, valid, level_ids = encoder_anchors(mask, shapes, base_size=0.05)
    anchors = anchors_unact.sigmoid()
    assert level_ids.tolist() == [0] * 8 + [1] * 2
    # image 0, level 0, token (row 1, col 2): centre ((2 + .5) / 4, (1 + .5) / 2), side 0.05
    torch.testing.assert_close(anchors[0, 6], torch.tensor([0.625, 0.75, 0.05, 0.05]))
    # level 1 anchors are twice as large
    torch.testing.assert_close(anchors[0, 8], torch.tensor([0.25, 0.5, 0.1, 0.1]))
    # image 1: valid width 2 of 4 at level 0, so token (0, 1) is centred at x = 1.5 / 2
    torch.testing.assert_close(anchors[1, 1], torch.tensor([0.75, 0.25, 0.05, 0.05]))
    assert valid[0].all()
    assert valid[1].tolist() == [True, True, False, False, True, True, False, False, True, False]
    assert torch.isinf(anchors_unact[1, 2]).all() and (anchors[1, 2] == 1).all()


def test_anchor_outside_valid_range_is_invalid():
    # 1 x 100 level: the first centre is at x = 0.005 < 0.01
    _, valid, _ = encoder_anchors(torch.zeros(1, 100, dtype=torch.bool), [(1, 100)])
    assert not valid[0, 0] and valid[0, 1] and not valid[0, 99]


def test_proposal_position_embedding_values():
    boxes = torch.logit(torch.tensor([[[0.5, 0.25, 0.1, 0.2]]]))
    emb = proposal_position_embedding(boxes, num_pos_feats=4, temperature=100)
    assert emb.shape == (1, 1, 16)
    # coordinate 0 (cx = 0.5): angle pi at frequencies 1, 1/10 -> sin(pi), cos(pi), sin(pi/10), cos(pi/10)
    expected = torch.tensor(
        [math.sin(math.pi), math.cos(math.pi), math.sin(math.pi / 10), math.cos(math.pi / 10)]
    )
    torch.testing.assert_close(emb[0, 0, :4], expected)


def test_plain_top_k_skips_invalid_and_caps_at_token_count():
    scores = torch.tensor([[0.1, 5.0, 3.0, 4.0]])
    valid = torch.tensor([[True, False, True, True]])
    level_ids = torch.zeros(4, dtype=torch.long)
    proposals = EncoderProposals(scores, torch.rand(1, 4, 4), valid, level_ids)
    assert select_two_stage_proposals(proposals, 1, 2).tolist() == [[3, 2]]
    # more proposals than tokens: all tokens, invalid ones last
    assert select_two_stage_proposals(proposals, 1, 10).tolist() == [[3, 2, 0, 1]]


def test_nms_selection_per_level_cap_and_top_up():
    # level 0: tokens 0-3, level 1: tokens 4-7. Tokens 0 and 1 are the same box (0 suppresses 1).
    level0 = [[0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2], [0.8, 0.2, 0.1, 0.1]]
    level1 = [[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2], [0.3, 0.7, 0.1, 0.1]]
    boxes = torch.tensor([*level0, *level1])[None]
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]])
    valid = torch.ones(1, 8, dtype=torch.bool)
    proposals = EncoderProposals(scores, boxes, valid, level_ids=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    # survivors in score order: 0, 2, 3, 4, 5, 6, 7 (token 4 overlaps token 0 but is on another level).
    # 4 proposals over 2 levels -> 2 per level: 0, 2 and 4, 5.
    picked = select_two_stage_proposals(proposals, 2, 4, use_nms=True)
    assert picked.tolist() == [[0, 2, 4, 5]]
    # 5 proposals -> 2 per level plus the best remaining survivor (3), kept in score order.
    picked = select_two_stage_proposals(proposals, 2, 5, use_nms=True)
    assert picked.tolist() == [[0, 2, 3, 4, 5]]
    # pre-NMS top-1 per level leaves only 2 survivors < 3 wanted: plain top-k fallback.
    picked = select_two_stage_proposals(proposals, 2, 3, use_nms=True, pre_nms_topk=1)
    assert picked.tolist() == [[0, 1, 2]]


def test_nms_selection_with_fewer_tokens_than_queries_does_not_crash():
    scores = torch.randn(2, 6)
    boxes = torch.rand(2, 6, 4) * 0.5 + 0.25
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 3:] = False
    proposals = EncoderProposals(scores, boxes, valid, torch.tensor([0, 0, 0, 0, 1, 2]))
    picked = select_two_stage_proposals(proposals, 3, 900, use_nms=True)
    assert picked.shape == (2, 6)
    assert set(picked[1, :3].tolist()) == {0, 1, 2}
