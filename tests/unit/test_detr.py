"""Tests of the DETR detector: output contract, input validation, gradient flow and model size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detrlab.models.backbone import ResNetBackbone
from detrlab.models.detr import DETR

NUM_CLASSES, QUERIES, DEC_LAYERS = 5, 10, 3


def _small_detr(backbone: ResNetBackbone | None = None, **kwargs) -> DETR:
    torch.manual_seed(0)
    backbone = backbone or ResNetBackbone("resnet_small", stage_widths=[8, 16, 32, 64])
    args = dict(
        num_classes=NUM_CLASSES,
        num_queries=QUERIES,
        hidden_dim=32,
        nheads=4,
        num_encoder_layers=2,
        num_decoder_layers=DEC_LAYERS,
        dim_feedforward=64,
    )
    return DETR(backbone, **(args | kwargs))


def _batch(b: int = 2, h: int = 64, w: int = 96):
    images = torch.randn(b, 3, h, w)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    if b > 1:
        mask[1, 40:, :] = True
        mask[1, :, 50:] = True
        images[mask[:, None].expand_as(images)] = 0.0
    return images, mask


@pytest.fixture(scope="module")
def detr_r50() -> DETR:
    return DETR(ResNetBackbone("resnet50"), num_classes=91).eval()


def test_output_contract():
    model = _small_detr().eval()
    with torch.no_grad():
        out = model(*_batch())
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs"}
    assert out["pred_logits"].shape == (2, QUERIES, NUM_CLASSES + 1)
    assert out["pred_boxes"].shape == (2, QUERIES, 4)
    assert len(out["aux_outputs"]) == DEC_LAYERS - 1
    for aux in out["aux_outputs"]:
        assert set(aux) == {"pred_logits", "pred_boxes"}
        assert aux["pred_logits"].shape == (2, QUERIES, NUM_CLASSES + 1)
        assert aux["pred_boxes"].shape == (2, QUERIES, 4)
        assert not torch.allclose(aux["pred_boxes"], out["pred_boxes"])
    boxes = torch.cat([out["pred_boxes"], *(a["pred_boxes"] for a in out["aux_outputs"])])
    assert boxes.min() >= 0 and boxes.max() <= 1


def test_no_aux_outputs_when_disabled():
    model = _small_detr(aux_loss=False).eval()
    with torch.no_grad():
        out = model(*_batch(b=1))
    assert out["aux_outputs"] == []
    assert out["pred_logits"].shape == (1, QUERIES, NUM_CLASSES + 1)


def test_learned_position_encoding():
    model = _small_detr(position_encoding="learned").eval()
    with torch.no_grad():
        out = model(*_batch())
    assert out["pred_boxes"].shape == (2, QUERIES, 4)


def test_tiny_image_smaller_than_stride(detr_r50):
    images, mask = torch.randn(1, 3, 20, 20), torch.zeros(1, 20, 20, dtype=torch.bool)
    with torch.no_grad():
        out = detr_r50(images, mask)
        small = _small_detr().eval()(images, mask)
    assert out["pred_boxes"].shape == (1, 100, 4)
    assert torch.isfinite(out["pred_logits"]).all()
    assert torch.isfinite(small["pred_boxes"]).all()


@pytest.mark.parametrize(
    ("images", "mask", "match"),
    [
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 32, 32, dtype=torch.bool), "uint8"),
        (torch.zeros(3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.bool), r"\(3, 32, 32\)"),
        (torch.zeros(1, 1, 32, 32), torch.zeros(1, 32, 32, dtype=torch.bool), r"\(1, 1, 32, 32\)"),
        (torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32), "torch.float32"),
        (torch.zeros(2, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.bool), r"\(1, 32, 32\)"),
        (torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 31, dtype=torch.bool), r"\(1, 32, 31\)"),
    ],
)
def test_invalid_inputs_raise(images, mask, match):
    model = _small_detr()
    with pytest.raises(ValueError, match=match):
        model(images, mask)


def _loss(out: dict, labels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    loss = torch.zeros(())
    for o in [out, *out["aux_outputs"]]:
        loss = loss + F.cross_entropy(o["pred_logits"].flatten(0, 1), labels.flatten())
        loss = loss + F.l1_loss(o["pred_boxes"], boxes)
    return loss


# The first decoder layer's self-attention sees all-zero content (tgt starts at 0), so every query attends
# to identical values: its q/k projections never matter (in_proj_weight gets no gradient; only the value
# bias does), and at init the value bias is 0, so out_proj.weight and the following norm1.weight see a zero
# input too. This is inherent to DETR's zero-initialized decoder content, not a broken graph.
_ZERO_GRAD_AT_INIT = {
    "transformer.decoder.layers.0.self_attn.in_proj_weight",
    "transformer.decoder.layers.0.self_attn.out_proj.weight",
    "transformer.decoder.layers.0.norm1.weight",
}


@pytest.mark.parametrize("backbone_name", ["resnet_small", "resnet18"])
def test_every_trainable_parameter_gets_a_gradient(backbone_name):
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18") if backbone_name == "resnet18" else None
    model = _small_detr(backbone).train()
    out = model(*_batch())
    labels = torch.randint(0, NUM_CLASSES + 1, (2, QUERIES))
    _loss(out, labels, torch.rand(2, QUERIES, 4)).backward()

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    zero = {n for n, p in trainable.items() if not p.grad.any()}
    assert zero == _ZERO_GRAD_AT_INIT
    assert all(p.grad is None for p in frozen.values())
    if backbone_name == "resnet18":
        assert "backbone.body.conv1.weight" in frozen
        assert "backbone.body.layer2.0.conv1.weight" in trainable
    else:
        assert frozen == {}


def test_backbone_parameters_are_prefixed(detr_r50):
    names = [n for n, _ in detr_r50.named_parameters()]
    assert "backbone.body.layer4.2.conv3.weight" in names
    assert not any(n.startswith("backbone.") for n, _ in detr_r50.transformer.named_parameters())


def test_detr_r50_parameter_count(detr_r50):
    total = sum(p.numel() for p in detr_r50.parameters())
    trainable = sum(p.numel() for p in detr_r50.parameters() if p.requires_grad)
    # Backbone convs 23,454,912 (FrozenBN holds buffers) + transformer 17,363,456 + input_proj 524,544
    # + query_embed 25,600 + class_embed 23,644 + bbox_embed 132,612.
    assert total == 41_524_768
    assert abs(total - 41.5e6) / 41.5e6 < 0.005
    # Minus the frozen stem and layer1 convs (222,400): the trainable size DETR-R50 reports.
    assert trainable == 41_302_368
