"""SetCriterion with sigmoid focal loss and DETA assignment: hand-checked focal loss, weighting, DETA assignment, empty targets, configs."""

import math

import pytest
import torch
from hydra.utils import instantiate
from torchvision.ops import sigmoid_focal_loss

from detrlab.losses import criterion as criterion_module
from detrlab.losses.assigner import Stage1Assigner, Stage2Assigner
from detrlab.losses.assignment import DetaAssignment, HungarianAssignment
from detrlab.losses.classification import SigmoidFocalLoss
from detrlab.losses.criterion import SetCriterion
from detrlab.losses.matcher import HungarianMatcher
from tests.helpers import compose_config

NUM_CLASSES = 3
LN2 = math.log(2.0)


def _criterion(
    num_classes=NUM_CLASSES,
    loss_weights=None,
    focal_alpha=0.25,
    focal_gamma=2.0,
    assign_first_stage=False,
    assign_second_stage=False,
    num_queries=300,
    cost_class=2.0,
):
    assignment = DetaAssignment(
        HungarianMatcher(class_cost="focal", cost_class=cost_class),
        Stage1Assigner() if assign_first_stage else None,
        Stage2Assigner(num_queries) if assign_second_stage else None,
    )
    return SetCriterion(SigmoidFocalLoss(num_classes, focal_alpha, focal_gamma), assignment, loss_weights)


def _boxes(generator, *shape):
    centres = torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2
    return torch.cat([centres, torch.rand(*shape, 2, generator=generator) * 0.3 + 0.1], dim=-1)


def _layer(generator, batch_size, num_predictions):
    return {
        "pred_logits": torch.randn(
            batch_size, num_predictions, NUM_CLASSES, generator=generator
        ).requires_grad_(),
        "pred_boxes": _boxes(generator, batch_size, num_predictions).requires_grad_(),
    }


def _two_stage_batch(sizes, seed=0, num_queries=10, num_tokens=80, num_aux=2):
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(sizes)
    outputs = _layer(generator, batch_size, num_queries)
    outputs["aux_outputs"] = [_layer(generator, batch_size, num_queries) for _ in range(num_aux)]
    outputs["enc_outputs"] = _layer(generator, batch_size, num_tokens)
    outputs["enc_outputs"]["anchors"] = _boxes(generator, batch_size, num_tokens)
    outputs["enc_outputs"]["valid"] = torch.rand(batch_size, num_tokens, generator=generator) > 0.2
    outputs["init_reference"] = _boxes(generator, batch_size, num_queries)
    targets = [
        {"labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator), "boxes": _boxes(generator, n)}
        for n in sizes
    ]
    return outputs, targets


def _all_layers(outputs):
    return [outputs, *outputs["aux_outputs"], outputs["enc_outputs"]]


def test_focal_loss_hand_checked():
    # 2 queries x 2 classes, all logits 0 (p = 1/2); query 0 is matched to the class-1 target.
    # focal(x=0, y=1) = 0.25 * (1/2)^2 * ln2, focal(x=0, y=0) = 0.75 * (1/2)^2 * ln2
    # sum = ln2 * (0.0625 + 3 * 0.1875) = 0.625 ln2, divided by num_boxes = 1
    criterion = _criterion(num_classes=2, cost_class=1.0)
    outputs = {
        "pred_logits": torch.zeros(1, 2, 2, requires_grad=True),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]], requires_grad=True),
    }
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = criterion(outputs, targets)
    assert losses["loss_ce"].item() == pytest.approx(0.625 * LN2, abs=1e-7)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["loss"].item() == pytest.approx(2.0 * 0.625 * LN2, abs=1e-6)
    # no query has a probability above 1/2, one target
    assert losses["cardinality_error"].item() == 1.0


def test_focal_loss_equals_torchvision_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, NUM_CLASSES, generator=generator)
    indices = [(torch.tensor([1, 3]), torch.tensor([1, 0])), (torch.tensor([4]), torch.tensor([0]))]
    targets = [{"labels": torch.tensor([2, 0])}, {"labels": torch.tensor([1])}]
    onehot = torch.zeros_like(logits)
    onehot[0, 3, 2] = onehot[0, 1, 0] = onehot[1, 4, 1] = 1.0
    for alpha, gamma in [(0.25, 2.0), (0.5, 1.0)]:
        criterion = _criterion(focal_alpha=alpha, focal_gamma=gamma)
        loss = criterion.class_loss({"pred_logits": logits}, targets, indices, torch.tensor(3.0))["loss_ce"]
        expected = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="sum") / 3.0
        torch.testing.assert_close(loss, expected)


def test_query_matched_to_two_targets_gets_both_classes():
    logits = torch.zeros(1, 2, NUM_CLASSES)
    indices = [(torch.tensor([0, 0]), torch.tensor([0, 1]))]
    targets = [{"labels": torch.tensor([0, 2])}]
    loss = _criterion().class_loss({"pred_logits": logits}, targets, indices, torch.tensor(1.0))["loss_ce"]
    # two positives (0.0625 ln2 each) and four negatives (0.1875 ln2 each)
    assert loss.item() == pytest.approx((2 * 0.0625 + 4 * 0.1875) * LN2, abs=1e-7)


def test_default_and_partial_loss_weights():
    assert _criterion().weight_dict == {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert _criterion(loss_weights={"ce": 1.0}).weight_dict == {
        "loss_ce": 1.0,
        "loss_bbox": 5.0,
        "loss_giou": 2.0,
    }
    assert "empty_weight" not in dict(_criterion().named_buffers())
    with pytest.raises(ValueError, match="unknown loss_weights"):
        _criterion(loss_weights={"cls": 1.0})


@pytest.mark.parametrize("assign", [False, True], ids=["hungarian", "deta"])
def test_loss_is_weighted_sum_of_all_copies(assign):
    outputs, targets = _two_stage_batch([2, 3], seed=1)
    weights = {"ce": 1.0, "bbox": 4.0, "giou": 3.0}
    torch.manual_seed(0)
    losses = _criterion(
        loss_weights=weights, assign_first_stage=assign, assign_second_stage=assign, num_queries=10
    )(outputs, targets)
    suffixes = ["", "_0", "_1", "_enc"]
    expected = sum(weights[key] * losses[f"loss_{key}{suffix}"] for key in weights for suffix in suffixes)
    torch.testing.assert_close(losses["loss"], expected)
    assert set(losses) == {
        f"{name}{suffix}"
        for name in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error", "class_error")
        for suffix in suffixes
    } | {"loss"}
    assert not losses["cardinality_error_enc"].requires_grad and losses["loss_ce_enc"].requires_grad


def test_encoder_targets_are_class_agnostic():
    outputs, targets = _two_stage_batch([2, 1], seed=2, num_aux=0)
    del outputs["enc_outputs"]["valid"]
    losses = _criterion()(outputs, targets)
    agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
    alone = _criterion()(outputs["enc_outputs"], agnostic)
    for term in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(losses[f"{term}_enc"], alone[term])
    with_labels = _criterion()(outputs["enc_outputs"], targets)
    assert not torch.allclose(losses["loss_ce_enc"], with_labels["loss_ce"])


def test_second_stage_uses_init_reference_once_for_every_layer():
    # One target; init_reference query 3 sits on it, every other proposal is far away. The predicted
    # boxes of query 3 are off by 0.1 in cx in every layer, so each layer's L1 is exactly 0.1.
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}
    init_reference = torch.tensor([[0.8, 0.8, 0.1, 0.1]]).repeat(1, 6, 1)
    init_reference[0, 3] = target["boxes"][0]

    def layer():
        boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2]]).repeat(1, 6, 1)  # every query predicts the target
        boxes[0, 3, 0] = 0.4
        return {"pred_logits": torch.zeros(1, 6, NUM_CLASSES), "pred_boxes": boxes}

    outputs = {**layer(), "aux_outputs": [layer(), layer()], "init_reference": init_reference}
    criterion = _criterion(assign_second_stage=True, num_queries=6)
    calls = []
    criterion.assignment.stage2_assigner.register_forward_hook(lambda *args: calls.append(1))
    criterion.assignment.matcher.register_forward_pre_hook(
        lambda *args: pytest.fail("decoder layers were Hungarian-matched")
    )
    losses = criterion(outputs, [target])
    assert len(calls) == 1
    for suffix in ("", "_0", "_1"):
        assert losses[f"loss_bbox{suffix}"].item() == pytest.approx(0.1, abs=1e-6)
    # Hungarian matching would pick one of the queries that predict the target exactly
    assert _criterion(num_queries=6)(outputs, [target])["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)


def test_invalid_encoder_tokens_are_never_matched():
    # Token 0 is a perfect prediction but invalid; token 2 is the best valid one.
    target = {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1], [0.52, 0.5, 0.2, 0.2]]])
    enc_outputs = {
        "pred_logits": torch.zeros(1, 3, NUM_CLASSES),
        "pred_boxes": boxes,
        "anchors": boxes,
        "valid": torch.tensor([[False, True, True]]),
    }
    for criterion in (_criterion(), _criterion(assign_first_stage=True)):
        query, target_idx = criterion.assignment.encoder_indices(enc_outputs, [target])[0]
        assert query.tolist() == [2] and target_idx.tolist() == [0]
    enc_outputs.pop("valid")
    assert _criterion().assignment.encoder_indices(enc_outputs, [target])[0][0].tolist() == [0]


@pytest.mark.parametrize("sizes", [[3, 0], [0, 0]], ids=["one-empty", "all-empty"])
@pytest.mark.parametrize("assign", [False, True], ids=["hungarian", "deta"])
def test_empty_targets_give_finite_losses_and_gradients(sizes, assign):
    outputs, targets = _two_stage_batch(sizes, seed=4)
    criterion = _criterion(assign_first_stage=assign, assign_second_stage=assign, num_queries=10)
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(value) for value in losses.values())
    losses["loss"].backward()
    for layer in _all_layers(outputs):
        for key in ("pred_logits", "pred_boxes"):
            assert layer[key].grad is not None and torch.isfinite(layer[key].grad).all()
        # the focal loss pushes every unmatched query towards "no class"
        assert layer["pred_logits"].grad.abs().sum() > 0
    if sum(sizes) == 0:
        assert all(losses[f"loss_bbox{s}"].item() == 0.0 for s in ("", "_0", "_1", "_enc"))
        assert losses["loss_ce"].item() > 0
    else:
        assert losses["loss_bbox"].item() > 0 and losses["loss_bbox_enc"].item() > 0


def test_num_boxes_is_averaged_across_ranks(monkeypatch):
    outputs, targets = _two_stage_batch([2, 2], seed=5, num_aux=0)
    single = _criterion()(outputs, targets)
    # pretend the other ranks hold 6 boxes on average: every term is divided by 6 instead of 4
    monkeypatch.setattr(criterion_module, "average_across_ranks", lambda value: torch.full_like(value, 6.0))
    averaged = _criterion()(outputs, targets)
    for term in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_enc"):
        torch.testing.assert_close(averaged[term], single[term] * 4.0 / 6.0)


def test_bad_inputs_raise_clear_errors():
    outputs, targets = _two_stage_batch([1, 1], seed=6)
    with pytest.raises(ValueError, match="num_classes=5"):
        _criterion(num_classes=5, cost_class=1.0)(outputs, targets)
    with pytest.raises(ValueError, match="one target dict per image"):
        _criterion()(outputs, targets[:1])
    with pytest.raises(KeyError, match="init_reference"):
        _criterion(assign_second_stage=True)(
            {k: v for k, v in outputs.items() if k != "init_reference"}, targets
        )
    outputs["enc_outputs"].pop("anchors")
    with pytest.raises(KeyError, match="anchors"):
        _criterion(assign_first_stage=True)(outputs, targets)
    bad_labels = [{"labels": torch.tensor([NUM_CLASSES]), "boxes": targets[0]["boxes"]}, targets[1]]
    with pytest.raises(ValueError, match=r"span \[\d, 3\].*0\.\.2"):
        _criterion()(outputs, bad_labels)


def test_deta_assigner_config_builds_the_deta_criterion(tmp_path):
    cfg = compose_config("train", ["model=deta_small", "data.num_classes=3"], tmp_path)
    criterion = instantiate(cfg.model.criterion)
    assert criterion.assignment.assign_first_stage and criterion.assignment.assign_second_stage
    assert criterion.assignment.stage1_assigner.thresholds == (0.3, 0.7)
    assert criterion.assignment.stage1_assigner.samples_per_image == 256
    assert criterion.assignment.stage2_assigner.thresholds == (0.6,)
    assert (
        criterion.assignment.matcher.class_cost == "focal" and criterion.assignment.matcher.cost_class == 2.0
    )
    # the Hungarian group assigns nothing by IoU
    cfg = compose_config(
        "train", ["model=deta_small", "model/assigner=hungarian", "data.num_classes=3"], tmp_path
    )
    hungarian = instantiate(cfg.model.criterion)
    assert type(hungarian.assignment) is HungarianAssignment
