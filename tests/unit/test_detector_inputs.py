"""The detector input contract: wrong inputs name the argument and the fix; tiny images work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from detrlab.builders import build_model
from detrlab.models.inputs import check_detector_inputs
from tests.helpers import TINY_OVERRIDES, compose_config

MODELS = ["detr_small", "deta_small", "deformable_detr_r50"]


@pytest.fixture(scope="module", params=MODELS)
def module(request, tmp_path_factory):
    overrides = [*TINY_OVERRIDES, f"model={request.param}", "data.num_classes=3", "paths.data_dir=/unused"]
    if request.param == "deformable_detr_r50":
        overrides += [
            "model/backbone=resnet18",
            "model.detector.with_box_refine=true",
            "model.detector.two_stage=true",
        ]
    cfg = compose_config("train", overrides, Path(tmp_path_factory.mktemp("out")))
    model = build_model(cfg.model)
    GlobalHydra.instance().clear()
    return model


def _batch(sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    images = torch.zeros(len(sizes), 3, h, w)
    mask = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for i, (ih, iw) in enumerate(sizes):
        images[i, :, :ih, :iw] = torch.randn(3, ih, iw)
        mask[i, :ih, :iw] = False
    return images, mask


def _targets(n: int) -> list[dict]:
    return [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])} for _ in range(n)]


@pytest.mark.parametrize(
    "sizes", [[(20, 24), (9, 13)], [(1, 1), (1, 1)], [(40, 3), (5, 2)]], ids=["20px+9px", "1x1", "40x3"]
)
def test_images_smaller_than_the_coarsest_stride_train_and_predict(module, sizes):
    module.train()
    images, mask = _batch(sizes)
    outputs = module.detector(images, mask)
    losses = module.criterion(outputs, _targets(len(sizes)))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    module.zero_grad(set_to_none=True)
    module.eval()
    with torch.no_grad():
        outputs = module.detector(images, mask)
        detections = module.postprocess(outputs, torch.tensor(sizes))
    assert torch.isfinite(outputs["pred_boxes"]).all()
    for detection in detections:
        assert len(detection["scores"]) > 0 and torch.isfinite(detection["boxes"]).all()


@pytest.mark.parametrize(
    ("images", "mask", "message"),
    [
        (torch.rand(3, 32, 32), torch.zeros(32, 32, dtype=torch.bool), r"one image .* images\[None\]"),
        (torch.rand(2, 1, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool), r"grayscale"),
        (torch.rand(2, 4, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool), r"RGBA"),
        (
            torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
            torch.zeros(2, 32, 32, dtype=torch.bool),
            r"float tensor",
        ),
        (torch.rand(0, 3, 32, 32), torch.zeros(0, 32, 32, dtype=torch.bool), r"images is empty"),
        (torch.rand(1, 3, 0, 32), torch.zeros(1, 0, 32, dtype=torch.bool), r"images is empty"),
        (torch.rand(2, 3, 32, 32), torch.zeros(2, 32, 32), r"mask must be a bool tensor"),
        (torch.rand(2, 3, 32, 32), torch.zeros(2, 16, 32, dtype=torch.bool), r"mask must be a bool tensor"),
        (
            torch.rand(2, 3, 8, 8),
            torch.ones(2, 8, 8, dtype=torch.bool),
            r"every pixel of image\(s\) \[0, 1\]",
        ),
    ],
    ids=[
        "unbatched",
        "grayscale",
        "rgba",
        "uint8",
        "no-image",
        "zero-height",
        "float-mask",
        "mask-shape",
        "all-pad",
    ],
)
def test_wrong_inputs_name_the_problem(module, images, mask, message):
    with pytest.raises(ValueError, match=message):
        module.detector(images, mask)


def test_non_tensors_are_a_type_error():
    with pytest.raises(TypeError, match="two tensors"):
        check_detector_inputs([torch.rand(3, 8, 8)], None)
