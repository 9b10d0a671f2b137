"""What DETR and Deformable DETR share through SetDetector: size checks, attributes, transformer options."""

from __future__ import annotations

import pytest
import torch

from detrlab.errors import ConfigError
from detrlab.models.backbone import ResNetBackbone
from detrlab.models.deformable_detr import DeformableDETR
from detrlab.models.detr import DETR
from detrlab.models.set_detector import SetDetector

SIZES = {
    "num_classes": 3,
    "num_queries": 6,
    "hidden_dim": 32,
    "nheads": 2,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
}


def _detr(**kwargs) -> DETR:
    backbone = ResNetBackbone("resnet_small", stage_widths=[8, 8, 8, 8])
    return DETR(backbone, **{**SIZES, "dim_feedforward": 16, **kwargs})


def _deformable(**kwargs) -> DeformableDETR:
    backbone = ResNetBackbone("resnet_small", return_stages=[2, 3, 4], stage_widths=[8, 8, 8, 8])
    return DeformableDETR(backbone, **{**SIZES, "dim_feedforward": 16, **kwargs})


@pytest.mark.parametrize("build", [_detr, _deformable], ids=["detr", "deformable_detr"])
def test_shared_attributes(build):
    model = build(aux_loss=False)
    assert isinstance(model, SetDetector)
    assert (model.num_classes, model.num_queries, model.hidden_dim, model.aux_loss) == (3, 6, 32, False)
    assert isinstance(model.backbone, ResNetBackbone)
    # optimizers select the backbone's learning rate by this prefix
    assert any(name.startswith("backbone.") for name, _ in model.named_parameters())


@pytest.mark.parametrize("build", [_detr, _deformable], ids=["detr", "deformable_detr"])
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"num_classes": 0}, "num_classes and num_queries must be >= 1, got 0 and 6"),
        ({"num_queries": 0}, "num_classes and num_queries must be >= 1, got 3 and 0"),
        ({"hidden_dim": 33, "nheads": 3}, "hidden_dim must be even .* got 33"),
    ],
)
def test_impossible_sizes_raise_config_error(build, bad, match):
    with pytest.raises(ConfigError, match=match):
        build(**bad)


def test_detr_forwards_transformer_options():
    model = _detr(num_encoder_layers=2, num_decoder_layers=3, dropout=0.0, normalize_before=True)
    assert len(model.transformer.encoder.layers) == 2 and len(model.transformer.decoder.layers) == 3
    # pre-norm layers need the closing encoder norm that post-norm ones do without
    assert isinstance(model.transformer.encoder.norm, torch.nn.LayerNorm)
    assert _detr().transformer.encoder.norm is None
    with pytest.raises(TypeError, match="not_an_option"):
        _detr(not_an_option=1)


def test_aux_outputs_follow_aux_loss():
    images, mask = torch.randn(1, 3, 128, 128), torch.zeros(1, 128, 128, dtype=torch.bool)
    for build in (_detr, _deformable):
        with torch.no_grad():
            assert len(build().eval()(images, mask)["aux_outputs"]) == SIZES["num_decoder_layers"] - 1
            assert build(aux_loss=False).eval()(images, mask)["aux_outputs"] == []
