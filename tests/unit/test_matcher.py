"""HungarianMatcher: hand-checked assignments and costs, batching, empty targets, bad inputs."""

import itertools
import math

import pytest
import torch
from torchvision.ops import generalized_box_iou

from detrlab.losses.matcher import HungarianMatcher
from detrlab.utils.boxes import cxcywh_to_xyxy


def _random_batch(sizes, num_queries=8, num_logits=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(len(sizes), num_queries, num_logits, generator=generator),
        "pred_boxes": torch.rand(len(sizes), num_queries, 4, generator=generator) * 0.4 + 0.1,
    }
    targets = [
        {
            "labels": torch.randint(0, num_logits - 1, (n,), generator=generator),
            "boxes": torch.rand(n, 4, generator=generator) * 0.4 + 0.1,
        }
        for n in sizes
    ]
    return outputs, targets


def test_two_queries_one_target_hand_checked():
    # Query 0 has the right box, query 1 the more confident class but a far-off box.
    # softmax: q0 -> p(class 0) = 1/3, q1 -> p(class 0) = 4/6.
    outputs = {
        "pred_logits": torch.tensor([[[0.0, 0.0, 0.0], [math.log(4.0), 0.0, 0.0]]]),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]]]),
    }
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    # q0 cost = -1/3 + 5*0 + 2*(-1) = -2.333
    # q1 cost = -2/3 + 5*0.6 + 2*0.68 = 3.693 (disjoint boxes: GIoU = -(0.25 - 0.08)/0.25 = -0.68)
    query, target = HungarianMatcher()(outputs, targets)[0]
    assert query.tolist() == [0] and target.tolist() == [0]
    assert query.dtype == torch.int64 and target.dtype == torch.int64
    # With only the class cost, the more confident query 1 wins.
    query, _ = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0)(outputs, targets)[0]
    assert query.tolist() == [1]


def test_focal_class_cost_hand_checked():
    matcher = HungarianMatcher(class_cost="focal", focal_alpha=0.25, focal_gamma=2.0)
    logits = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    cost = matcher.classification_cost(logits, torch.tensor([0, 1, 0]))
    # p = sigmoid(0.3) = 0.574442516811659:
    #   pos = 0.25 * (1 - p)^2 * -log(p)     = 0.025098318872149
    #   neg = 0.75 * p^2       * -log(1 - p) = 0.211442802177623
    # p = sigmoid(-1.2): pos - neg = 0.216064756343373 - 0.010580159151580
    expected = torch.tensor(
        [[-0.1863444833054735, 0.20548459719179277, -0.1863444833054735]], dtype=torch.float64
    )
    torch.testing.assert_close(cost, expected, rtol=0, atol=1e-12)


def test_softmax_class_cost_hand_checked():
    matcher = HungarianMatcher()
    cost = matcher.classification_cost(
        torch.tensor([[math.log(2.0), 0.0, math.log(5.0)]]), torch.tensor([1, 0])
    )
    torch.testing.assert_close(cost, torch.tensor([[-0.125, -0.25]]))


@pytest.mark.parametrize("class_cost", ["softmax", "focal"])
def test_batched_matching_equals_per_image_matching(class_cost):
    sizes = [3, 0, 5, 1, 8]
    outputs, targets = _random_batch(sizes, num_queries=8, seed=1)
    matcher = HungarianMatcher(class_cost=class_cost)
    batched = matcher(outputs, targets)
    for b, target in enumerate(targets):
        single = matcher({k: v[b : b + 1] for k, v in outputs.items()}, [target])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
        assert len(batched[b][0]) == sizes[b]
        assert len(set(batched[b][0].tolist())) == sizes[b]  # one query per target


def test_assignment_is_the_brute_force_optimum():
    outputs, targets = _random_batch([3], num_queries=5, num_logits=4, seed=2)
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    query, target = matcher(outputs, targets)[0]

    # Cost matrix written out independently of the matcher's code.
    prob = outputs["pred_logits"][0].softmax(-1)
    boxes, gt_boxes, gt_labels = outputs["pred_boxes"][0], targets[0]["boxes"], targets[0]["labels"]
    giou = generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes))
    cost = torch.empty(5, 3)
    for q in range(5):
        for t in range(3):
            l1 = (boxes[q] - gt_boxes[t]).abs().sum()
            cost[q, t] = -prob[q, gt_labels[t]] + 5.0 * l1 - 2.0 * giou[q, t]
    best = min(itertools.permutations(range(5), 3), key=lambda qs: sum(cost[q, t] for t, q in enumerate(qs)))
    assert dict(zip(target.tolist(), query.tolist())) == dict(enumerate(best))


def test_one_image_without_targets():
    outputs, targets = _random_batch([2, 0], seed=3)
    targets[1] = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    indices = HungarianMatcher()(outputs, targets)
    assert len(indices[0][0]) == 2
    assert indices[1][0].shape == (0,) and indices[1][1].shape == (0,)
    assert indices[1][0].dtype == torch.int64 and indices[1][1].dtype == torch.int64


@pytest.mark.parametrize("class_cost", ["softmax", "focal"])
def test_all_images_without_targets(class_cost):
    outputs, targets = _random_batch([0, 0, 0], seed=4)
    indices = HungarianMatcher(class_cost=class_cost)(outputs, targets)
    assert len(indices) == 3
    for query, target in indices:
        assert query.shape == (0,) and target.shape == (0,)
        assert query.dtype == torch.int64 and target.dtype == torch.int64


def test_more_targets_than_queries_matches_every_query():
    outputs, targets = _random_batch([6], num_queries=4, seed=5)
    query, target = HungarianMatcher()(outputs, targets)[0]
    assert sorted(query.tolist()) == [0, 1, 2, 3]
    assert len(set(target.tolist())) == 4


def test_nan_predictions_raise_clear_error():
    outputs, targets = _random_batch([2], seed=6)
    outputs["pred_boxes"][0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        HungarianMatcher()(outputs, targets)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="all 0"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
    with pytest.raises(ValueError, match="class_cost"):
        HungarianMatcher(class_cost="sigmoid")
    outputs, targets = _random_batch([1, 1], seed=7)
    with pytest.raises(ValueError, match="one target dict per image"):
        HungarianMatcher()(outputs, targets[:1])


def test_no_gradient_is_tracked():
    outputs, targets = _random_batch([2], seed=8)
    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    query, target = HungarianMatcher()(outputs, targets)[0]
    assert not query.requires_grad and not target.requires_grad
