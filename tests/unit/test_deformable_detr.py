"""Deformable DETR / DETA detectors: sizes, output contract, every config trains a step on CPU."""

from __future__ import annotations

import hydra
import pytest
import torch

from detrlab.models.backbone import ResNetBackbone
from detrlab.models.deformable_detr import DETA, DeformableDETR
from detrlab.models.swin import SwinBackbone
from tests.helpers import compose_config
from tests.kernels import attention_path


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # unique parameters, frozen ones included


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 40.1e6),
        ({"with_box_refine": True, "two_stage": True}, 41.2e6),
    ],
    ids=["plain", "two_stage_refine"],
)
def test_deformable_detr_r50_parameter_count(kwargs, expected):
    model = DeformableDETR(ResNetBackbone("resnet50", return_stages=[2, 3, 4]), num_classes=91, **kwargs)
    assert _num_params(model) == pytest.approx(expected, rel=0.005)


def test_deta_r50_parameter_count_and_defaults(tmp_path):
    # DETA's R50 sizes live in its model config; the architecture choices in the class
    cfg = compose_config("train", ["model=deta_r50", "data.num_classes=91"], tmp_path)
    model = hydra.utils.instantiate(cfg.model.detector)
    assert isinstance(model, DETA)
    assert _num_params(model) == pytest.approx(48.4e6, rel=0.005)
    assert model.num_queries == 900 and model.transformer.num_feature_levels == 5
    assert model.transformer.assign_first_stage and hasattr(model.transformer, "pix_trans")
    # one head per decoder layer + the encoder's
    assert len(model.class_embed) == len(model.bbox_embed) == 7


def test_two_stage_without_refinement_is_rejected():
    with pytest.raises(ValueError, match="with_box_refine"):
        DeformableDETR(ResNetBackbone("resnet18", return_stages=[2, 3, 4]), 3, two_stage=True)


def _tiny(**kwargs):
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet_small", return_stages=[2, 3, 4], stage_widths=[8, 16, 32, 32])
    sizes = dict(
        num_queries=12,
        hidden_dim=32,
        nheads=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dim_feedforward=32,
    )
    return DeformableDETR(backbone, num_classes=4, **{**sizes, **kwargs})


def _batch():
    images = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, 48:] = True
    mask[1, :, 64:] = True
    return images, mask


VARIANTS = pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_feature_levels": 1},
        {"with_box_refine": True},
        {"with_box_refine": True, "two_stage": True},
        {
            "with_box_refine": True,
            "two_stage": True,
            "add_proposal_features": True,
            "assign_first_stage": True,
        },
    ],
    ids=["plain", "single_scale", "refine", "two_stage", "deta"],
)


@VARIANTS
def test_output_contract(kwargs):
    model = _tiny(**kwargs).eval()
    images, mask = _batch()
    out = model(images, mask)
    assert out["pred_logits"].shape == (2, 12, 4)
    assert out["pred_boxes"].shape == (2, 12, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert len(out["aux_outputs"]) == 1
    assert out["aux_outputs"][0]["pred_boxes"].shape == (2, 12, 4)
    if kwargs.get("two_stage"):
        enc = out["enc_outputs"]
        s = 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2  # tokens of the 4 levels (strides 8..64)
        assert enc["pred_logits"].shape == (2, s, 4) and enc["pred_boxes"].shape == (2, s, 4)
        assert enc["anchors"].shape == (2, s, 4) and enc["valid"].shape == (2, s)
        # image 1 is padded, image 0 is not: only image 1 has padded (invalid) tokens on level 0
        assert enc["valid"][0, :96].all() and not enc["valid"][1, :96].all()
        assert (enc["anchors"][~enc["valid"]] == 1).all()
        # the decoder's input boxes are encoder proposals
        assert out["init_reference"].shape == (2, 12, 4)
        assert not out["init_reference"].requires_grad
    else:
        assert "enc_outputs" not in out and "init_reference" not in out


@VARIANTS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernel_and_pytorch_paths_agree_in_outputs_and_gradients(kwargs, dtype):
    compiled = _tiny(attention_implementation="auto", **kwargs).eval().to(dtype)  # eval: no dropout
    reference = _tiny(attention_implementation="pytorch", **kwargs).eval().to(dtype)
    with torch.no_grad():  # sampling points off the initial ring, so bilinear weights are generic
        for p in compiled.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    reference.load_state_dict(compiled.state_dict())
    images, mask = _batch()
    outputs = {}
    for implementation, model in (("auto", compiled), ("pytorch", reference)):
        with attention_path(implementation):
            out = model(images.to(dtype), mask)
        (out["pred_logits"].sigmoid().sum() + out["pred_boxes"].square().sum()).backward()
        outputs[implementation] = out
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(outputs["auto"][key], outputs["pytorch"][key], rtol=1e-5, atol=1e-5)
    # float32 gradients: the two paths round differently (about 1e-7 in the attention), and the
    # backbone's weight gradients amplify that by up to 1e3 (more with channels-last convolutions),
    # so the gradients are held to the float64 run, where any difference of formula would show.
    if dtype == torch.float64:
        for (name, p), q in zip(compiled.named_parameters(), reference.parameters()):
            if p.grad is not None or q.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-11, msg=name)


def test_refinement_feeds_each_layer_the_previous_layers_boxes():
    model = _tiny(with_box_refine=True, two_stage=True).eval()
    images, mask = _batch()
    seen = []
    for layer in model.transformer.decoder.layers:
        layer.cross_attn.register_forward_pre_hook(lambda mod, args: seen.append(args[1]))
    out = model(images, mask)
    valid_ratio = model.transformer.valid_ratios([mask[:, ::8, ::8]])  # level 0 is stride 8
    # layer 1's reference boxes are layer 0's predicted boxes (scaled into the padded level-0 map)
    torch.testing.assert_close(
        seen[1][:, :, 0], out["aux_outputs"][0]["pred_boxes"] * valid_ratio.repeat(1, 1, 2)
    )
    torch.testing.assert_close(seen[0][:, :, 0], out["init_reference"] * valid_ratio.repeat(1, 1, 2))


def test_swin_backbone_pads_to_patch_size_and_reports_channels():
    backbone = SwinBackbone("swin_t", return_stages=[2, 3, 4], drop_path_rate=0.0)
    assert backbone.num_channels == [192, 384, 768] and backbone.strides == [8, 16, 32]
    images = torch.randn(1, 3, 66, 70)
    mask = torch.zeros(1, 66, 70, dtype=torch.bool)
    feats = backbone(images, mask)
    assert [tuple(f.shape) for f, _ in feats] == [(1, 192, 9, 9), (1, 384, 5, 5), (1, 768, 3, 3)]
    assert feats[0][1].shape == (1, 9, 9)
    with pytest.raises(FileNotFoundError, match="pretrained="):
        SwinBackbone("swin_t", pretrained="/nonexistent/swin.pth")


def test_input_projection_takes_the_backbones_memory_layout():
    channels_last = _tiny()
    assert channels_last.backbone.channels_last
    convs = [m for m in channels_last.input_proj.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    torch.manual_seed(0)
    backbone = ResNetBackbone(
        "resnet_small", return_stages=[2, 3, 4], stage_widths=[8, 16, 32, 32], channels_last=False
    )
    contiguous = DeformableDETR(backbone, num_classes=4, num_queries=12, hidden_dim=32, nheads=2)
    assert all(
        m.weight.is_contiguous() for m in contiguous.input_proj.modules() if isinstance(m, torch.nn.Conv2d)
    )
