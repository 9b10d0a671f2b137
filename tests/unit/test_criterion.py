"""SetCriterion with softmax cross entropy and Hungarian matching: hand-checked values, aux losses and weighting, empty targets, distributed normalization."""

import math

import pytest
import torch
import torch.distributed as torch_dist

from detrlab.losses import criterion as criterion_module
from detrlab.losses.assignment import HungarianAssignment
from detrlab.losses.classification import SoftmaxCrossEntropy
from detrlab.losses.criterion import SetCriterion
from detrlab.losses.matcher import HungarianMatcher
from detrlab.utils import dist

NUM_CLASSES = 2

# Hand-checked case: 2 queries, 1 target of class 1.
#   q0: logits [ln2, 0, 0]   -> p = [1/2, 1/4, 1/4], box close to the target  -> matched
#   q1: logits [ln4, 0, ln2] -> p = [4/7, 1/7, 2/7], box far from the target -> "no object"
HAND_LOGITS = [[math.log(2.0), 0.0, 0.0], [math.log(4.0), 0.0, math.log(2.0)]]
HAND_BOXES = [[0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]]
HAND_TARGET = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.55, 0.5, 0.2, 0.3]])}
# L1(q0, target) = 0.05 + 0 + 0 + 0.1
HAND_L1 = 0.15
# q0 xyxy [.4,.4,.6,.6], target xyxy [.45,.35,.65,.65]: intersection .15*.2 = .03, union .04+.06-.03 = .07,
# enclosing box .25*.3 = .075 -> GIoU = 3/7 - (.075 - .07)/.075
HAND_GIOU = 3.0 / 7.0 - 0.005 / 0.075


def _criterion(eos_coef=0.1, **kwargs):
    return SetCriterion(
        SoftmaxCrossEntropy(NUM_CLASSES, eos_coef=eos_coef), HungarianAssignment(HungarianMatcher()), **kwargs
    )


def _hand_outputs():
    return {
        "pred_logits": torch.tensor([HAND_LOGITS], requires_grad=True),
        "pred_boxes": torch.tensor([HAND_BOXES], requires_grad=True),
    }


def _random_outputs(batch_size, num_queries=6, num_aux=0, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def layer():
        return {
            "pred_logits": torch.randn(
                batch_size, num_queries, NUM_CLASSES + 1, generator=generator
            ).requires_grad_(),
            "pred_boxes": (
                torch.rand(batch_size, num_queries, 4, generator=generator) * 0.4 + 0.1
            ).requires_grad_(),
        }

    outputs = layer()
    outputs["aux_outputs"] = [layer() for _ in range(num_aux)]
    return outputs


def _random_targets(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed + 100)
    return [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator),
            "boxes": torch.rand(n, 4, generator=generator) * 0.4 + 0.1,
        }
        for n in sizes
    ]


def test_hand_checked_values():
    losses = _criterion(eos_coef=0.1)(_hand_outputs(), [HAND_TARGET])
    # CE: q0 -> class 1 (weight 1): -ln(1/4); q1 -> "no object" (weight 0.1): -ln(2/7); mean by weight sum
    expected_ce = (math.log(4.0) + 0.1 * math.log(3.5)) / 1.1
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, abs=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(HAND_L1, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(1.0 - HAND_GIOU, abs=1e-6)
    # both queries' best class is an object class, 1 target
    assert losses["cardinality_error"].item() == pytest.approx(1.0)
    # q0's best class is 0, its target is 1
    assert losses["class_error"].item() == pytest.approx(100.0)
    expected_loss = expected_ce + 5.0 * HAND_L1 + 2.0 * (1.0 - HAND_GIOU)
    assert losses["loss"].item() == pytest.approx(expected_loss, abs=1e-5)


def test_hand_checked_values_with_an_empty_image():
    # Second image: no targets; both queries with logits [0, 0, ln2] -> p(no object) = 1/2 (its argmax).
    outputs = {
        "pred_logits": torch.tensor([HAND_LOGITS, [[0.0, 0.0, math.log(2.0)]] * 2]),
        "pred_boxes": torch.tensor([HAND_BOXES, HAND_BOXES]),
    }
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    losses = _criterion(eos_coef=0.1)(outputs, [HAND_TARGET, empty])
    expected_ce = (math.log(4.0) + 0.1 * math.log(3.5) + 2 * 0.1 * math.log(2.0)) / (1.0 + 3 * 0.1)
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, abs=1e-6)
    # num_boxes is still 1: the box terms are unchanged
    assert losses["loss_bbox"].item() == pytest.approx(HAND_L1, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(1.0 - HAND_GIOU, abs=1e-6)
    # |2 - 1| for the first image, |0 - 0| for the second
    assert losses["cardinality_error"].item() == pytest.approx(0.5)


def test_num_boxes_normalizes_the_box_terms():
    # Two copies of the hand case: L1 and GIoU sums double and so does num_boxes.
    outputs = {
        "pred_logits": torch.tensor([HAND_LOGITS, HAND_LOGITS]),
        "pred_boxes": torch.tensor([HAND_BOXES, HAND_BOXES]),
    }
    losses = _criterion()(outputs, [HAND_TARGET, HAND_TARGET])
    assert losses["loss_bbox"].item() == pytest.approx(HAND_L1, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(1.0 - HAND_GIOU, abs=1e-6)


def test_num_boxes_is_averaged_across_ranks(monkeypatch):
    # Pretend the other ranks have more boxes: the mean over ranks is 4, so the box sums are divided by 4.
    monkeypatch.setattr(criterion_module, "average_across_ranks", lambda value: torch.full_like(value, 4.0))
    losses = _criterion()(_hand_outputs(), [HAND_TARGET])
    assert losses["loss_bbox"].item() == pytest.approx(HAND_L1 / 4, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx((1.0 - HAND_GIOU) / 4, abs=1e-6)


def test_single_rank_process_group():
    torch_dist.init_process_group("gloo", store=torch_dist.HashStore(), rank=0, world_size=1)
    try:
        assert dist.is_distributed() and dist.world_size() == 1 and dist.rank() == 0
        assert dist.average_across_ranks(torch.tensor(3.0)).item() == 3.0
        assert dist.all_gather_objects({"a": 1}) == [{"a": 1}]
        losses = _criterion()(_hand_outputs(), [HAND_TARGET])
        assert losses["loss_bbox"].item() == pytest.approx(HAND_L1, abs=1e-6)
    finally:
        torch_dist.destroy_process_group()
    assert not dist.is_distributed() and dist.world_size() == 1


def test_aux_losses_have_suffixes_and_loss_is_the_weighted_sum():
    weights = {"ce": 2.0, "bbox": 3.0, "giou": 4.0}
    criterion = _criterion(loss_weights=weights)
    outputs = _random_outputs(batch_size=2, num_aux=2, seed=1)
    targets = _random_targets([3, 1], seed=1)
    losses = criterion(outputs, targets)

    terms = ["loss_ce", "loss_bbox", "loss_giou", "cardinality_error", "class_error"]
    expected_keys = {*terms, *(f"{t}_{i}" for t in terms for i in range(2)), "loss"}
    assert set(losses) == expected_keys

    expected = sum(
        weights[name] * losses[f"loss_{name}{suffix}"] for name in weights for suffix in ("", "_0", "_1")
    )
    torch.testing.assert_close(losses["loss"], expected)

    # Each aux term uses its own matching: same value as the criterion on that layer alone.
    for i, aux in enumerate(outputs["aux_outputs"]):
        alone = criterion(aux, targets)
        for term in terms:
            torch.testing.assert_close(losses[f"{term}_{i}"], alone[term])


def test_partial_loss_weights_keep_defaults():
    criterion = _criterion(loss_weights={"bbox": 1.5})
    assert criterion.weight_dict == {"loss_ce": 1.0, "loss_bbox": 1.5, "loss_giou": 2.0}


@pytest.mark.parametrize("sizes", [[2, 0, 1], [0, 0]], ids=["one-empty", "all-empty"])
def test_empty_targets_give_finite_loss_and_gradients(sizes):
    outputs = _random_outputs(batch_size=len(sizes), num_aux=1, seed=2)
    targets = _random_targets(sizes, seed=2)  # empty images: labels [0], boxes [0, 4]
    losses = _criterion()(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for layer in [outputs, *outputs["aux_outputs"]]:
        for key in ("pred_logits", "pred_boxes"):
            assert layer[key].grad is not None and torch.isfinite(layer[key].grad).all()
        # the no-object cross entropy always trains the logits
        assert layer["pred_logits"].grad.abs().sum() > 0
    if sum(sizes) == 0:
        assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
        assert losses["class_error"].item() == 0.0


def test_logging_terms_carry_no_gradient():
    losses = _criterion()(_random_outputs(batch_size=1, seed=3), _random_targets([2], seed=3))
    assert losses["loss"].requires_grad and losses["loss_ce"].requires_grad
    assert not losses["cardinality_error"].requires_grad and not losses["class_error"].requires_grad


def test_empty_weight_buffer():
    criterion = _criterion(eos_coef=0.25)
    torch.testing.assert_close(criterion.classification.empty_weight, torch.tensor([1.0, 1.0, 0.25]))
    assert "empty_weight" in dict(criterion.classification.named_buffers())


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="unknown loss_weights"):
        _criterion(loss_weights={"cls": 1.0})
    wrong_classes = {"pred_logits": torch.zeros(1, 2, 5), "pred_boxes": torch.full((1, 2, 4), 0.3)}
    with pytest.raises(ValueError, match="num_classes"):
        _criterion()(wrong_classes, [HAND_TARGET])
