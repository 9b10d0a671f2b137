"""Every deformable-family model config composes, builds, and trains one step with full gradient coverage."""

from __future__ import annotations

import pytest
import torch

from detrlab.builders import build_model
from tests.helpers import TINY_OVERRIDES, compose_config


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=deformable_detr_r50", "model/backbone=resnet18"],
        ["model=deformable_detr_r50", "model/backbone=resnet18", "model.detector.num_feature_levels=1"],
        [
            "model=deformable_detr_r50",
            "model/backbone=resnet18",
            "model.detector.with_box_refine=true",
            "model.detector.two_stage=true",
        ],
        ["model=deta_r50", "model/backbone=resnet18"],
        ["model=deta_swin", "model.detector.backbone.name=swin_t"],
    ],
    ids=["deformable", "single_scale", "two_stage_refine", "deta", "deta_swin"],
)
def test_config_builds_and_every_trainable_parameter_gets_a_gradient(overrides, tmp_path):
    cfg = compose_config("train", [*overrides, *TINY_OVERRIDES], tmp_path)
    module = build_model(cfg.model)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, 40:] = True
    mask[1, :, 72:] = True
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.5]])},
    ]
    outputs = module.detector(images, mask)
    losses = module.criterion(outputs, targets)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    missing = [n for n, p in module.detector.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    preds = module.postprocess(outputs, torch.tensor([[64, 96], [40, 72]]))
    assert len(preds) == 2 and preds[0]["boxes"].shape[-1] == 4
