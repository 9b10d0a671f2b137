"""Frozen BatchNorm folded into convolutions: same values, gradients and state-dict keys as torchvision."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from detrlab.models.backbone import ResNetBackbone
from detrlab.models.frozen_norm_folding import NormFoldedConv2d

STAGES = {"layer2": "2", "layer3": "3", "layer4": "4"}


def _randomize_norms(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial frozen statistics and affine, so a wrong fold cannot pass as the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, FrozenBatchNorm2d):
                c = m.weight.numel()
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def _pair(name: str = "resnet18"):
    """(our backbone, torchvision's unfolded network with the same weights), both in the same
    (contiguous) layout, so that the only difference is the fold."""
    torch.manual_seed(0)
    ours = ResNetBackbone(name, return_stages=[2, 3, 4], trainable_stages=5, channels_last=False)
    _randomize_norms(ours, seed=1)
    plain = torchvision.models.get_model(name, weights=None, norm_layer=FrozenBatchNorm2d)
    result = plain.load_state_dict(ours.body.state_dict(), strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    return ours, IntermediateLayerGetter(plain, STAGES)


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tolerance: float = 1e-5) -> None:
    """Equal up to ``tolerance`` times the largest magnitude (a wrong fold is off by O(1))."""
    scale = b.abs().max().item()
    torch.testing.assert_close(a, b, rtol=0, atol=tolerance * scale, msg=what)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_every_frozen_norm_is_folded_and_the_state_dict_keys_are_torchvisions(name):
    ours, plain = _pair(name)
    convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, NormFoldedConv2d) for m in convs)
    assert sorted(ours.body.state_dict()) == sorted(plain.state_dict())


# float32: the scaled weight rounds differently from a convolution followed by the scaling (about
# 2e-6 of the largest value); float64 leaves only the fold itself to differ.
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_folded_backbone_matches_the_unfolded_network_in_outputs_and_gradients(dtype, tolerance):
    ours, plain = _pair("resnet18")
    ours, plain = ours.to(dtype), plain.to(dtype)
    images = torch.randn(2, 3, 96, 128, dtype=dtype)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    folded = ours(images, mask)
    expected = plain(images)
    for (features, _), key in zip(folded, STAGES.values()):
        _close(features, expected[key], f"stage {key}", tolerance)
    sum(f.square().mean() for f, _ in folded).backward()
    sum(expected[k].square().mean() for k in STAGES.values()).backward()
    plain_params = dict(plain.named_parameters())
    for name, param in ours.body.named_parameters():
        _close(param.grad, plain_params[name].grad, name, tolerance)


def test_loaded_statistics_take_effect_and_deepcopies_keep_their_own_pairs():
    ours, plain = _pair("resnet18")
    _randomize_norms(plain, seed=7)  # new statistics, loaded after folding
    ours.body.load_state_dict(plain.state_dict(), strict=False)
    images = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        _close(ours(images, mask)[-1][0], plain(images)["4"], "after load_state_dict")
        copied = copy.deepcopy(ours)
        block = copied.body.layer1[0]
        assert block.conv1.norm is block.bn1 and block.conv1.norm is not ours.body.layer1[0].bn1
        _close(copied(images, mask)[-1][0], plain(images)["4"], "deepcopy")


def test_trainable_batchnorm_is_not_folded():
    small = ResNetBackbone("resnet_small", return_stages=[2, 3, 4])
    assert not any(isinstance(m, NormFoldedConv2d) for m in small.modules())
    unfrozen = ResNetBackbone("resnet18", frozen_batchnorm=False)
    assert not any(isinstance(m, NormFoldedConv2d) for m in unfrozen.modules())


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_channels_last_backbone_matches_the_contiguous_one(dtype, tolerance):
    torch.manual_seed(0)
    contiguous = ResNetBackbone("resnet18", return_stages=[2, 3, 4], trainable_stages=5, channels_last=False)
    _randomize_norms(contiguous, seed=1)
    channels_last = ResNetBackbone("resnet18", return_stages=[2, 3, 4], trainable_stages=5)
    channels_last.load_state_dict(contiguous.state_dict())
    assert channels_last.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 96, 128, dtype=dtype)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    outputs = []
    for backbone in (contiguous.to(dtype), channels_last.to(dtype)):
        features = backbone(images, mask)
        sum(f.square().mean() for f, _ in features).backward()
        outputs.append([f for f, _ in features] + [p.grad for p in backbone.parameters()])
    assert outputs[1][0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*outputs):
        torch.testing.assert_close(b, a, rtol=0, atol=tolerance * a.abs().max().item())
