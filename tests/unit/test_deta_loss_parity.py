"""SetCriterion (sigmoid focal loss, DETA assignment) and the IoU assigners agree with DETA's loss in the `transformers` library."""

import pytest
import torch
from torchvision.ops import box_iou

from detrlab.losses.assigner import Stage1Assigner, Stage2Assigner
from detrlab.losses.assignment import DetaAssignment
from detrlab.losses.classification import SigmoidFocalLoss
from detrlab.losses.criterion import SetCriterion
from detrlab.losses.matcher import HungarianMatcher
from detrlab.losses.sampling import label_by_iou, topk_per_target
from detrlab.utils.boxes import cxcywh_to_xyxy

deta = pytest.importorskip("transformers.models.deprecated.deta.modeling_deta")

NUM_CLASSES = 4
TERMS = ("loss_ce", "loss_bbox", "loss_giou")


def _boxes(generator, *shape):
    """Valid normalized cxcywh boxes: centres in [0.2, 0.8], sizes in [0.05, 0.45]."""
    centres = torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(*shape, 2, generator=generator) * 0.4 + 0.05
    return torch.cat([centres, sizes], dim=-1)


def _layer(generator, batch_size, num_predictions):
    return {
        "pred_logits": torch.randn(batch_size, num_predictions, NUM_CLASSES, generator=generator),
        "pred_boxes": _boxes(generator, batch_size, num_predictions),
    }


def _batch(sizes, seed, num_queries=12, num_tokens=60, num_aux=2, dtype=torch.float64):
    """Outputs and targets of a two-stage detector. Float64 by default, so that the comparisons test
    the formulas rather than float32 summation order (large terms of all-empty batches differ in the
    7th digit)."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(sizes)
    outputs = _layer(generator, batch_size, num_queries)
    outputs["aux_outputs"] = [_layer(generator, batch_size, num_queries) for _ in range(num_aux)]
    outputs["enc_outputs"] = _layer(generator, batch_size, num_tokens)
    outputs["enc_outputs"]["anchors"] = _boxes(generator, batch_size, num_tokens)
    outputs["init_reference"] = _boxes(generator, batch_size, num_queries)
    targets = [
        {"labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator), "boxes": _boxes(generator, n)}
        for n in sizes
    ]
    cast = {key: value.to(dtype) for key, value in outputs.items() if torch.is_tensor(value)}
    cast["aux_outputs"] = [{k: v.to(dtype) for k, v in aux.items()} for aux in outputs["aux_outputs"]]
    cast["enc_outputs"] = {k: v.to(dtype) for k, v in outputs["enc_outputs"].items()}
    return cast, [{"labels": t["labels"], "boxes": t["boxes"].to(dtype)} for t in targets]


def _reference_loss(outputs, targets, num_queries, **flags):
    """DETA's loss on the same tensors; its labels are the same contiguous 0..C-1 class indices."""
    matcher = deta.DetaHungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)
    criterion = deta.DetaLoss(
        matcher=matcher,
        num_classes=NUM_CLASSES,
        focal_alpha=0.25,
        losses=["labels", "boxes"],
        num_queries=num_queries,
        **flags,
    )

    def rename(layer):
        renamed = {"logits": layer["pred_logits"], "pred_boxes": layer["pred_boxes"]}
        if "anchors" in layer:
            renamed["anchors"] = layer["anchors"]
        return renamed

    their_outputs = rename(outputs)
    their_outputs["init_reference"] = outputs["init_reference"]
    their_outputs["auxiliary_outputs"] = [rename(aux) for aux in outputs["aux_outputs"]]
    their_outputs["enc_outputs"] = rename(outputs["enc_outputs"])
    their_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    return criterion(their_outputs, their_targets)


def _assert_terms_close(ours, theirs, num_aux, rtol=0.0):
    suffixes = ["", *(f"_{i}" for i in range(num_aux)), "_enc"]
    for suffix in suffixes:
        for term in TERMS:
            torch.testing.assert_close(
                ours[term + suffix], torch.as_tensor(theirs[term + suffix]), rtol=rtol, atol=1e-5
            )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sizes", [[3, 1, 4], [2, 0, 5], [0, 0, 0]], ids=["full", "one-empty", "all-empty"])
def test_hungarian_path_matches_deta_loss(sizes, dtype):
    outputs, targets = _batch(sizes, seed=sum(sizes) + 1, dtype=dtype)
    ours = SetCriterion(
        SigmoidFocalLoss(NUM_CLASSES), DetaAssignment(HungarianMatcher(class_cost="focal", cost_class=2.0))
    )(outputs, targets)
    theirs = _reference_loss(outputs, targets, num_queries=12)
    # float32: the same up to summation order (relative 1e-6 of terms that reach ~200 without targets)
    _assert_terms_close(ours, theirs, num_aux=2, rtol=0.0 if dtype == torch.float64 else 1e-6)
    if sum(sizes) > 0:
        assert ours["loss_bbox"] > 0 and ours["loss_bbox_enc"] > 0


def test_focal_hungarian_matching_matches_deta_matcher():
    outputs, targets = _batch([3, 0, 6, 1], seed=5)
    ours = HungarianMatcher(class_cost="focal", cost_class=2.0)(outputs, targets)
    theirs = deta.DetaHungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)(
        {"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]},
        [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets],
    )
    for (our_query, our_target), (their_query, their_target) in zip(ours, theirs):
        assert our_query.tolist() == their_query.tolist() and our_target.tolist() == their_target.tolist()


def _overlapping_iou(seed, num_targets, num_predictions):
    """IoU of random boxes where every target overlaps some prediction (where both libraries agree)."""
    generator = torch.Generator().manual_seed(seed)
    targets, predictions = _boxes(generator, num_targets), _boxes(generator, num_predictions)
    iou = box_iou(cxcywh_to_xyxy(targets), cxcywh_to_xyxy(predictions))
    assert (iou.max(dim=1).values > 0).all()
    return iou


@pytest.mark.parametrize(
    ("thresholds", "labels"), [((0.3, 0.7), (0, -1, 1)), ((0.6,), (0, 1))], ids=["stage1", "stage2"]
)
@pytest.mark.parametrize("seed", range(5))
def test_iou_labels_match_deta_matcher(thresholds, labels, seed):
    iou = _overlapping_iou(seed, num_targets=1 + seed, num_predictions=40)
    reference = deta.DetaMatcher(list(thresholds), list(labels), allow_low_quality_matches=True)
    their_matches, their_labels = reference(iou)
    our_matches, our_labels = label_by_iou(iou, thresholds, labels)
    assert our_matches.tolist() == their_matches.tolist()
    assert our_labels.tolist() == their_labels.tolist()
    assert (our_labels == 1).sum() >= 1


@pytest.mark.parametrize("seed", range(5))
def test_topk_per_target_matches_deta_sampling(seed):
    generator = torch.Generator().manual_seed(seed)
    iou = torch.rand(5, 30, generator=generator)
    prediction = torch.randperm(30, generator=generator)[:12]
    target = torch.randint(0, 5, (12,), generator=generator)
    for k in (1, 4, 8):
        ours = topk_per_target(prediction, target, iou, k)
        theirs = deta.sample_topk_per_gt(prediction, target, iou, k)
        assert ours[0].tolist() == theirs[0].tolist() and ours[1].tolist() == theirs[1].tolist()


def test_assigners_match_deta_assigners_when_caps_do_not_bind():
    # Fewer positives than the sample caps: nothing random is left, so the results must be equal.
    outputs, targets = _batch([4, 0, 7], seed=11, num_queries=40, num_tokens=120)
    their_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    ours = Stage1Assigner()(outputs["enc_outputs"]["anchors"], targets)
    theirs = deta.DetaStage1Assigner()({"anchors": outputs["enc_outputs"]["anchors"]}, their_targets)
    for (our_pred, our_gt), (their_pred, their_gt) in zip(ours, theirs):
        assert our_pred.tolist() == their_pred.tolist() and our_gt.tolist() == their_gt.tolist()
    # positives in both images with targets (a low-quality positive counts for the target it overlaps
    # most, so a target may end up with none)
    assert len(ours[0][0]) > 0 and len(ours[2][0]) > 0 and len(ours[1][0]) == 0

    ours = Stage2Assigner(num_queries=1000)(outputs["init_reference"], targets)
    theirs = deta.DetaStage2Assigner(num_queries=1000)(
        {"init_reference": outputs["init_reference"]}, their_targets
    )
    for (our_pred, our_gt), (their_pred, their_gt) in zip(ours, theirs):
        assert our_pred.tolist() == their_pred.tolist() and our_gt.tolist() == their_gt.tolist()


def test_deta_assignment_losses_match_deta_loss_when_caps_do_not_bind():
    outputs, targets = _batch([4, 0, 3], seed=3, num_queries=40, num_tokens=120)
    ours = SetCriterion(
        SigmoidFocalLoss(NUM_CLASSES),
        DetaAssignment(
            HungarianMatcher(class_cost="focal", cost_class=2.0),
            Stage1Assigner(),
            Stage2Assigner(num_queries=1000),
        ),
    )(outputs, targets)
    theirs = _reference_loss(
        outputs, targets, num_queries=1000, assign_first_stage=True, assign_second_stage=True
    )
    _assert_terms_close(ours, theirs, num_aux=2)
