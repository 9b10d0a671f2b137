"""Tests of the ResNet backbones: shapes, strides, freezing, mask resizing and local weight loading."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detrlab.models.backbone import ResNetBackbone


@pytest.fixture(scope="module")
def resnet50_all_stages() -> ResNetBackbone:
    return ResNetBackbone("resnet50", return_stages=(1, 2, 3, 4)).eval()


def _no_padding(b: int, h: int, w: int) -> torch.Tensor:
    return torch.zeros(b, h, w, dtype=torch.bool)


def test_resnet50_shapes_strides_channels(resnet50_all_stages):
    backbone = resnet50_all_stages
    assert backbone.num_channels == [256, 512, 1024, 2048]
    assert backbone.strides == [4, 8, 16, 32]
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 96), _no_padding(2, 64, 96))
    assert len(out) == 4
    for (feat, mask), c, s in zip(out, backbone.num_channels, backbone.strides):
        assert feat.shape == (2, c, 64 // s, 96 // s)
        assert mask.shape == (2, 64 // s, 96 // s)
        assert mask.dtype == torch.bool


def test_resnet50_default_returns_last_stage_only():
    backbone = ResNetBackbone("resnet50")
    assert backbone.num_channels == [2048]
    assert backbone.strides == [32]
    # avgpool and fc are not kept.
    assert not any(name.startswith(("fc.", "avgpool")) for name, _ in backbone.named_modules())


def test_resnet50_dc5_has_stride_16():
    backbone = ResNetBackbone("resnet50", dilation=True).eval()
    assert backbone.strides == [16]
    with torch.no_grad():
        ((feat, mask),) = backbone(torch.randn(1, 3, 64, 96), _no_padding(1, 64, 96))
    assert feat.shape == (1, 2048, 4, 6)
    assert mask.shape == (1, 4, 6)


def test_dc5_rejected_for_basic_block_nets():
    with pytest.raises(ValueError, match="resnet18"):
        ResNetBackbone("resnet18", dilation=True)


def test_resnet_small_shapes_and_trainable_bn():
    backbone = ResNetBackbone("resnet_small", return_stages=[1, 2, 3, 4])
    assert backbone.num_channels == [32, 64, 128, 256]
    assert backbone.strides == [4, 8, 16, 32]
    out = backbone(torch.randn(2, 3, 64, 96), _no_padding(2, 64, 96))
    for (feat, mask), c, s in zip(out, backbone.num_channels, backbone.strides):
        assert feat.shape == (2, c, 64 // s, 96 // s)
        assert mask.shape == (2, 64 // s, 96 // s)
    # Everything trains, with ordinary BatchNorm, whatever trainable_stages/frozen_batchnorm say.
    assert all(p.requires_grad for p in backbone.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())


def test_resnet_small_custom_widths_and_blocks():
    backbone = ResNetBackbone(
        "resnet_small", stage_widths=[8, 16, 24, 40], stage_blocks=[2, 1, 1, 3], return_stages=(3, 4)
    )
    assert backbone.num_channels == [24, 40]
    assert backbone.strides == [16, 32]
    assert len(backbone.body.layer1) == 2
    assert len(backbone.body.layer4) == 3
    out = backbone(torch.randn(1, 3, 64, 64), _no_padding(1, 64, 64))
    assert [f.shape for f, _ in out] == [(1, 24, 4, 4), (1, 40, 2, 2)]


def test_default_freezing_matches_detr(resnet50_all_stages):
    params = dict(resnet50_all_stages.named_parameters())
    assert not params["body.conv1.weight"].requires_grad
    assert all(not p.requires_grad for n, p in params.items() if n.startswith("body.layer1."))
    for stage in ("layer2", "layer3", "layer4"):
        stage_params = [p for n, p in params.items() if n.startswith(f"body.{stage}.")]
        assert stage_params and all(p.requires_grad for p in stage_params)
    # Frozen BN keeps its statistics and affine in buffers.
    assert isinstance(resnet50_all_stages.body.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet50_all_stages.modules())
    assert not any("bn" in n for n in params)


@pytest.mark.parametrize(("stages", "n_trainable_convs"), [(0, 0), (1, 5), (3, 15), (4, 19), (5, 20)])
def test_trainable_stages_count(stages, n_trainable_convs):
    # resnet18 (frozen BN, bias-free convs): stem conv, layer1 4 convs, layer2..4 5 convs each (with the
    # downsample conv) = 20 conv weights.
    backbone = ResNetBackbone("resnet18", trainable_stages=stages)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert len(trainable) == n_trainable_convs


def test_trainable_batchnorm_option():
    backbone = ResNetBackbone("resnet18", frozen_batchnorm=False, trainable_stages=1)
    assert isinstance(backbone.body.bn1, nn.BatchNorm2d)
    assert not backbone.body.layer3[0].bn1.weight.requires_grad
    assert backbone.body.layer4[0].bn1.weight.requires_grad


def test_mask_resized_with_nearest():
    backbone = ResNetBackbone("resnet_small", return_stages=(2, 4)).eval()
    mask = torch.ones(1, 64, 96, dtype=torch.bool)
    mask[0, :40, :70] = False  # a 40x70 image padded to 64x96
    with torch.no_grad():
        (_, m8), (_, m32) = backbone(torch.randn(1, 3, 64, 96), mask)
    # Stride 8 samples rows 0, 8, ..., 56 and columns 0, 8, ..., 88: rows < 40 and columns < 70 are valid.
    expected8 = torch.ones(1, 8, 12, dtype=torch.bool)
    expected8[0, :5, :9] = False
    assert torch.equal(m8, expected8)
    # Stride 32 samples rows 0, 32 and columns 0, 32, 64: all valid.
    assert torch.equal(m32, torch.zeros(1, 2, 3, dtype=torch.bool))


def test_missing_pretrained_file_names_path_and_fix(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError) as err:
        ResNetBackbone("resnet50", pretrained=str(path))
    message = str(err.value)
    assert str(path) in message
    assert "resnet50-0676ba61.pth" in message
    assert "model.detector.backbone.pretrained=" in message


def test_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        reference.layer2[0].bn1.running_mean.uniform_(-1, 1)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # includes fc.* and num_batches_tracked, both ignored

    backbone = ResNetBackbone("resnet18", pretrained=str(path))
    body = backbone.body
    assert torch.equal(body.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert torch.equal(body.conv1.weight, reference.conv1.weight)
    assert torch.equal(body.layer2[0].bn1.running_mean, reference.layer2[0].bn1.running_mean)
    # Freezing is applied after loading.
    assert not body.conv1.weight.requires_grad


def test_pretrained_architecture_mismatch(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not match backbone 'resnet34'"):
        ResNetBackbone("resnet34", pretrained=str(path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "vgg16"}, "unknown backbone name"),
        ({"name": "resnet50", "stage_widths": [8, 8, 8, 8]}, "only apply to name='resnet_small'"),
        ({"name": "resnet_small", "return_stages": (0, 4)}, "return_stages"),
        ({"name": "resnet_small", "stage_blocks": [1, 1]}, "4 positive ints"),
        ({"name": "resnet18", "trainable_stages": 6}, "trainable_stages"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetBackbone(**kwargs)
