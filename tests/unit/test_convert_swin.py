"""Swin-backbone DETA checkpoints (transformers and original-repository key formats) import exactly."""

from __future__ import annotations

import hydra
import pytest
import torch

pytest.importorskip("transformers.models.deprecated.deta.modeling_deta")
from transformers.models.deprecated.deta.image_processing_deta import DetaImageProcessor

from detrlab.convert import convert_checkpoint
from detrlab.models.swin import SwinBackbone
from tests.kernels import ATTENTION_PATHS, attention_path
from tests.unit.convert_fixtures import hf_to_original, make_hf_model, original_args
from tests.unit.test_convert_parity import _padded_batch


@pytest.fixture(scope="module")
def swin_reference(tmp_path_factory):
    model = make_hf_model("deta_swin")
    root = tmp_path_factory.mktemp("deta_swin")
    model.save_pretrained(root / "hf")
    images, mask = _padded_batch("deta")
    with torch.no_grad():
        outputs = model(pixel_values=images, pixel_mask=(~mask).long())
    return model, root, outputs


@pytest.mark.parametrize("implementation", ATTENTION_PATHS)
def test_hf_swin_deta_matches_the_reference(swin_reference, implementation):
    _, root, theirs = swin_reference
    detector, converted = convert_checkpoint(root / "hf", attention_implementation=implementation)
    backbone = converted.detector_config["backbone"]
    assert backbone["_target_"].endswith("SwinBackbone") and backbone["window_size"] == 2
    assert isinstance(detector.backbone, SwinBackbone)
    with torch.no_grad(), attention_path(implementation):
        ours = detector(*_padded_batch("deta"))
    torch.testing.assert_close(ours["pred_logits"], theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours["pred_boxes"], theirs.pred_boxes, atol=1e-4, rtol=0)
    assert ours["pred_boxes"].std() > 1e-3

    sizes = torch.tensor([[480, 640], [300, 400]])
    mine = hydra.utils.instantiate(converted.model_config["postprocess"])(ours, sizes)
    their = DetaImageProcessor().post_process_object_detection(
        theirs, threshold=0.0, target_sizes=sizes, nms_threshold=0.7
    )
    for a, b in zip(mine, their):
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
        assert a["labels"].tolist() == b["labels"].tolist()


@pytest.mark.parametrize("implementation", ATTENTION_PATHS)
def test_original_swin_deta_checkpoint_matches_the_reference(swin_reference, tmp_path, implementation):
    model, _, theirs = swin_reference
    # jozhang97/DETA layout: Swin repository names under backbone.0.body, args without the Swin
    # architecture (read from the weights' shapes).
    torch.save(
        {"model": hf_to_original(model.state_dict(), "deta"), "args": original_args(model, "deta")},
        tmp_path / "deta_swin.pth",
    )
    detector, converted = convert_checkpoint(
        tmp_path / "deta_swin.pth", attention_implementation=implementation
    )
    backbone = converted.detector_config["backbone"]
    assert (backbone["embed_dim"], backbone["depths"], backbone["num_heads"], backbone["window_size"]) == (
        16,
        [1, 1, 2, 1],
        [1, 1, 2, 2],
        2,
    )
    with torch.no_grad(), attention_path(implementation):
        ours = detector(*_padded_batch("deta"))
    torch.testing.assert_close(ours["pred_logits"], theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours["pred_boxes"], theirs.pred_boxes, atol=1e-4, rtol=0)
