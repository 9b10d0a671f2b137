"""Real DETA training steps on awkward batches: an image without boxes, and LVIS's 1203 classes."""

from __future__ import annotations

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from detrlab.builders import build_model
from tests.helpers import TINY_OVERRIDES, compose_config


def _deta(tmp_path, num_classes: int):
    cfg = compose_config(
        "train", ["model=deta_small", *TINY_OVERRIDES, f"data.num_classes={num_classes}"], tmp_path
    )
    GlobalHydra.instance().clear()
    module = build_model(cfg.model)
    assert type(module.detector).__name__ == "DETA"
    assignment = module.criterion.assignment
    assert assignment.stage1_assigner is not None and assignment.stage2_assigner is not None
    return module.train()


def _batch(num_classes: int, boxes_per_image: list[int]):
    """Two 64x64 images (the second one padded on the right), targets in normalized cxcywh."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(len(boxes_per_image), 3, 64, 64, generator=generator)
    mask = torch.zeros(len(boxes_per_image), 64, 64, dtype=torch.bool)
    mask[-1, :, 48:] = True
    images[mask[:, None].expand_as(images)] = 0
    targets = []
    for count in boxes_per_image:
        centers = 0.25 + 0.5 * torch.rand(count, 2, generator=generator)
        sizes = 0.1 + 0.3 * torch.rand(count, 2, generator=generator)
        targets.append(
            {
                "labels": torch.randint(0, num_classes, (count,), generator=generator),
                "boxes": torch.cat([centers, sizes], dim=1),
                "image_id": torch.tensor(len(targets)),
                "orig_size": torch.tensor([64, 64]),
                "size": torch.tensor([64, 64]),
            }
        )
    return images, mask, targets


def _train_step(module, images, mask, targets) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    outputs = module.detector(images, mask)
    losses = module.criterion(outputs, targets)
    losses["loss"].backward()
    return losses


def _assert_finite_and_every_parameter_has_a_gradient(module, losses):
    bad = {name: float(value) for name, value in losses.items() if not torch.isfinite(value).all()}
    assert not bad, f"non-finite loss terms: {bad}"
    trainable = [(name, p) for name, p in module.detector.named_parameters() if p.requires_grad]
    missing = [name for name, p in trainable if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    nonfinite = [name for name, p in trainable if not torch.isfinite(p.grad).all()]
    assert not nonfinite, f"non-finite gradients: {nonfinite}"


def test_deta_step_with_an_image_without_boxes(tmp_path):
    module = _deta(tmp_path, num_classes=3)
    losses = _train_step(module, *_batch(3, boxes_per_image=[3, 0]))
    _assert_finite_and_every_parameter_has_a_gradient(module, losses)
    assert losses["loss"] > 0


def test_deta_step_where_no_image_has_boxes(tmp_path):
    module = _deta(tmp_path, num_classes=3)
    losses = _train_step(module, *_batch(3, boxes_per_image=[0, 0]))
    assert all(torch.isfinite(value).all() for value in losses.values())
    # Only the classification terms have something to learn (everything is background).
    assert losses["loss"] > 0


@pytest.mark.parametrize("num_classes", [1203])
def test_deta_step_with_lvis_sized_class_count(tmp_path, num_classes):
    module = _deta(tmp_path, num_classes=num_classes)
    images, mask, targets = _batch(num_classes, boxes_per_image=[4, 2])
    targets[0]["labels"][0] = num_classes - 1  # the last class index is valid
    outputs = module.detector(images, mask)
    assert outputs["pred_logits"].shape[-1] == num_classes
    losses = _train_step(module, images, mask, targets)
    _assert_finite_and_every_parameter_has_a_gradient(module, losses)
