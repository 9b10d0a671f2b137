"""IoU assignment: hand-checked thresholds, low-quality matches, subsampling caps, top-k per target."""

import pytest
import torch

from detrlab.losses.assigner import IoUAssigner, Stage1Assigner, Stage2Assigner
from detrlab.losses.sampling import label_by_iou, subsample_labels, topk_per_target

STAGE1 = {"thresholds": (0.3, 0.7), "labels": (0, -1, 1)}
STAGE2 = {"thresholds": (0.6,), "labels": (0, 1)}

# 2 targets x 5 predictions. Best target per prediction: p0 gt1 (0.25), p1 gt1 (0.5), p2 gt0 (0.75),
# p3 gt0 (0.0, tie -> first), p4 gt1 (0.65). Best prediction per target: gt0 -> p2, gt1 -> p4.
HAND_IOU = torch.tensor([[0.1, 0.35, 0.75, 0.0, 0.2], [0.25, 0.5, 0.2, 0.0, 0.65]])


def test_stage1_thresholds_and_low_quality_matches_hand_checked():
    matched, label = label_by_iou(HAND_IOU, **STAGE1, allow_low_quality_matches=False)
    assert matched.tolist() == [1, 1, 0, 0, 1]
    # 0.25 < 0.3 negative, 0.5 ignored, 0.75 positive, 0 negative, 0.65 ignored
    assert label.tolist() == [0, -1, 1, 0, -1]
    matched, label = label_by_iou(HAND_IOU, **STAGE1)
    # p4 is gt1's best prediction, so it becomes positive although 0.65 < 0.7
    assert matched.tolist() == [1, 1, 0, 0, 1]
    assert label.tolist() == [0, -1, 1, 0, 1]


def test_stage2_single_threshold_hand_checked():
    _, label = label_by_iou(HAND_IOU, **STAGE2, allow_low_quality_matches=False)
    assert label.tolist() == [0, 0, 1, 0, 1]  # 0.65 >= 0.6
    iou = torch.tensor([[0.5, 0.55, 0.1]])
    assert label_by_iou(iou, **STAGE2, allow_low_quality_matches=False)[1].tolist() == [0, 0, 0]
    assert label_by_iou(iou, **STAGE2)[1].tolist() == [0, 1, 0]  # low-quality: gt0's best


def test_threshold_boundaries_are_inclusive_below():
    iou = torch.tensor([[0.3, 0.7, 0.2999, 0.6999]])
    assert label_by_iou(iou, **STAGE1, allow_low_quality_matches=False)[1].tolist() == [-1, 1, 0, -1]


def test_low_quality_ties_and_targets_without_overlap():
    # gt0's best IoU 0.4 is shared by p0 and p2 (both positive); gt1 overlaps nothing, which must not make
    # every zero-IoU prediction its "best" match.
    iou = torch.tensor([[0.4, 0.1, 0.4, 0.0], [0.0, 0.0, 0.0, 0.0]])
    matched, label = label_by_iou(iou, **STAGE1)
    assert label.tolist() == [1, 0, 1, 0]
    assert matched.tolist()[:3] == [0, 0, 0]


def test_valid_mask_excludes_predictions():
    # p2 is gt0's best overall but invalid: p1 (0.35) becomes gt0's low-quality positive instead.
    _, label = label_by_iou(HAND_IOU, **STAGE1, valid=torch.tensor([True, True, False, True, True]))
    assert label.tolist() == [0, 1, -1, 0, 1]


def test_no_targets_labels_everything_negative():
    matched, label = label_by_iou(torch.zeros(0, 4), **STAGE1)
    assert matched.tolist() == [0, 0, 0, 0] and label.tolist() == [0, 0, 0, 0]


def test_label_by_iou_rejects_bad_arguments():
    with pytest.raises(ValueError, match="one label more"):
        label_by_iou(HAND_IOU, (0.3, 0.7), (0, 1))
    with pytest.raises(ValueError, match="ascending"):
        label_by_iou(HAND_IOU, (0.7, 0.3), (0, -1, 1))


@pytest.mark.parametrize(
    ("num_pos", "num_neg", "num_samples", "fraction", "expected"),
    [
        (300, 100, 256, 0.5, (128, 100)),  # positives capped, negatives run out
        (300, 400, 256, 0.5, (128, 128)),
        (10, 500, 256, 0.5, (10, 246)),  # missing positives are filled with negatives
        (10, 20, 256, 0.5, (10, 20)),
        (300, 900, 900, 0.25, (225, 675)),  # stage 2 with 900 queries
        (0, 5, 8, 0.25, (0, 5)),
    ],
)
def test_subsample_caps_and_fractions_over_seeds(num_pos, num_neg, num_samples, fraction, expected):
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg), torch.full((50,), -1.0)]).long()
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    seen_positives = set()
    for seed in range(100):
        pos, neg = subsample_labels(
            labels, num_samples, fraction, generator=torch.Generator().manual_seed(seed)
        )
        assert (len(pos), len(neg)) == expected
        assert len(pos) <= int(num_samples * fraction) and len(pos) + len(neg) <= num_samples
        assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
        assert len(set(pos.tolist())) == len(pos) and len(set(neg.tolist())) == len(neg)
        seen_positives.update(pos.tolist())
    if num_pos > expected[0]:
        # random, not always the same subset: over 100 draws nearly every positive gets picked
        assert len(seen_positives) > 0.9 * num_pos


def test_topk_per_target_hand_checked():
    iou = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.6, 0.0], [0.2, 0.95, 0.3, 0.85, 0.4, 0.5]])
    # gt0 has 4 sampled positives (not its best ones), gt1 has 1
    prediction, target = torch.tensor([4, 2, 3, 5, 1]), torch.tensor([0, 0, 0, 0, 1])
    pred, gt = topk_per_target(prediction, target, iou, k=4)
    assert pred.tolist() == [0, 2, 3, 4, 1] and gt.tolist() == [0, 0, 0, 0, 1]
    pred, gt = topk_per_target(prediction, target, iou, k=2)
    assert pred.tolist() == [0, 2, 1] and gt.tolist() == [0, 0, 1]
    # gt0 with 3 positives takes p0, p2, p3; gt1 with 2 takes p1 (0.95), p3 (0.85): p3 serves both
    pred, gt = topk_per_target(torch.tensor([4, 2, 5, 0, 1]), torch.tensor([0, 1, 0, 1, 0]), iou, k=4)
    assert pred.tolist() == [0, 2, 3, 1, 3] and gt.tolist() == [0, 0, 0, 1, 1]
    # k larger than the number of predictions
    pred, gt = topk_per_target(prediction, target, iou[:, :3], k=4)
    assert pred.tolist() == [0, 2, 1, 1] and gt.tolist() == [0, 0, 0, 1]
    empty = torch.empty(0, dtype=torch.int64)
    assert topk_per_target(empty, empty, iou, k=4)[0].numel() == 0


def _boxes(generator, n, low=0.1, span=0.4):
    return torch.cat(
        [
            torch.rand(n, 2, generator=generator) * 0.6 + 0.2,
            torch.rand(n, 2, generator=generator) * span + low,
        ],
        1,
    )


def test_assigner_caps_over_seeds():
    generator = torch.Generator().manual_seed(0)
    targets = [{"boxes": _boxes(generator, 3)}]
    # 400 anchors jittered around the 3 targets: far more positives than the caps allow
    anchors = targets[0]["boxes"].repeat(134, 1)[:400] + torch.randn(400, 4, generator=generator) * 0.005
    for assigner, cap in [(Stage1Assigner(), 128), (Stage2Assigner(num_queries=400), 100)]:
        for seed in range(20):
            torch.manual_seed(seed)
            pred, gt = assigner(anchors[None], targets)[0]
            assert len(pred) == len(gt) <= cap
            counts = torch.bincount(gt, minlength=3)
            assert counts.tolist() == [4, 4, 4]  # every target keeps exactly k of its many positives
    # a tight cap limits the positives before the top-k: at most int(8 * 0.25) = 2 in all
    small = IoUAssigner(0.6, 0.6, samples_per_image=8, positive_fraction=0.25)
    for seed in range(20):
        torch.manual_seed(seed)
        assert len(small(anchors[None], targets)[0][0]) == 2


def test_assigner_never_assigns_invalid_boxes():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
    valid = torch.tensor([False, True, True])
    pred, gt = Stage1Assigner()(anchors[None], [{"boxes": target}], valid[None])[0]
    assert pred.tolist() == [1] and gt.tolist() == [0]
    pred, _ = Stage1Assigner()(anchors[None], [{"boxes": target}])[0]
    assert pred.tolist() == [0, 1]  # both have IoU >= 0.7 when all are valid


def test_assigner_empty_targets_and_bad_shapes():
    anchors = torch.rand(2, 5, 4)
    empty = {"boxes": torch.zeros(0, 4)}
    for pred, gt in Stage1Assigner()(anchors, [empty, empty]):
        assert pred.numel() == 0 and gt.numel() == 0 and pred.dtype == torch.int64
    with pytest.raises(ValueError, match="one per target"):
        Stage1Assigner()(anchors, [empty])
    with pytest.raises(ValueError, match="valid must be"):
        Stage1Assigner()(anchors, [empty, empty], torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="negative_below <= positive_from"):
        IoUAssigner(0.7, 0.3, 256, 0.5)
