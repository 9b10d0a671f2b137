"""ResNet backbones that return multi-stage feature maps together with their padding masks.

Three families are supported:

* torchvision ResNets (``resnet18`` ... ``wide_resnet101_2``), built with ``weights=None`` and, by default,
  :class:`torchvision.ops.FrozenBatchNorm2d`. ImageNet weights are loaded only from a local file.
* ``resnet_custom``: torchvision's layout (7x7 stem, frozen BN by default) with free stem width, stage
  widths, depths and block type, for imported checkpoints whose widths torchvision does not offer.
* ``resnet_small``: a compact ResNet of torchvision ``BasicBlock`` stages with trainable BatchNorm and
  Kaiming init. It exists for CPU quick starts, where a frozen-BN network trained from random init does
  not learn; it therefore ignores ``frozen_batchnorm`` and ``trainable_stages`` and trains every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from detrlab.models.configurable_resnet import ConfigurableResNet
from detrlab.models.frozen_norm_folding import fold_frozen_batchnorm
from detrlab.models.geometry import downsample_padding_mask
from detrlab.models.weights_file import require_weights_file

TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
# BasicBlock cannot dilate, so these cannot be built as DC5.
BASIC_BLOCK_RESNETS = ("resnet18", "resnet34")
SMALL_RESNET = "resnet_small"
# torchvision layout with free widths (imported checkpoints of non-standard width).
CUSTOM_RESNET = "resnet_custom"

# Freezing order for ``trainable_stages``: the first k of these train.
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "stem")
_STEM_MODULES = ("conv1.", "bn1.")


class SmallResNet(nn.Module):
    """A compact ResNet of ``BasicBlock`` stages with trainable BatchNorm.

    Stem: 3x3 stride-2 conv + BN + ReLU + 3x3 stride-2 max-pool (overall stride 4). ``layer1`` keeps the
    resolution and ``layer2..4`` halve it, giving strides 4/8/16/32. Module names follow torchvision's
    ResNet (``conv1``, ``bn1``, ``layer1``...) so the same feature extraction and state-dict loading apply.

    Args:
        stage_widths: output channels of ``layer1..layer4``.
        stage_blocks: number of ``BasicBlock`` per stage.
    """

    def __init__(self, stage_widths: Sequence[int], stage_blocks: Sequence[int]) -> None:
        super().__init__()
        stem_width = stage_widths[0]
        # A 3x3 stem (instead of 7x7) is enough for small inputs and much cheaper on CPU.
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_ch = stem_width
        for i, (width, blocks) in enumerate(zip(stage_widths, stage_blocks)):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", self._make_stage(in_ch, width, blocks, stride))
            in_ch = width

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(in_ch: int, width: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_ch != width:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        layers = [BasicBlock(in_ch, width, stride=stride, downsample=downsample)]
        layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)


def _stage_out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    if isinstance(last, Bottleneck):
        return last.conv3.out_channels
    if isinstance(last, BasicBlock):
        return last.conv2.out_channels
    raise TypeError(f"unsupported ResNet block type {type(last).__name__}")


def _pretrained_hint(name: str) -> str:
    """File name of the torchvision ImageNet checkpoint for ``name`` (metadata only, no download)."""
    if name not in TORCHVISION_RESNETS:
        return f"a torchvision-format state dict for {name}"
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    return url.rsplit("/", 1)[-1]


def _pretrained_file(path: str, name: str) -> Path:
    """Resolve the weights path, failing early (before building the network) when it does not exist."""
    return require_weights_file(path, "backbone", _pretrained_hint(name))


def _load_pretrained(model: nn.Module, file: Path, name: str) -> None:
    """Load a local torchvision-format ResNet state dict into ``model``; ``fc.*`` keys are ignored."""
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(
            f"{str(file)!r} holds a {type(state).__name__}, expected a ResNet state dict "
            "(the output of torchvision_model.state_dict())."
        )
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{str(file)!r} does not match backbone {name!r}: missing keys {missing[:8]}, unexpected keys "
            f"{unexpected[:8]}. Pass the state dict of the same architecture as backbone.name."
        )


class ResNetBackbone(nn.Module):
    """ResNet feature extractor returning ``(features, mask)`` for each requested stage.

    Args:
        name: a torchvision ResNet name (``resnet18``/``34``/``50``/``101``/...), ``"resnet_small"`` or
            ``"resnet_custom"``.
        pretrained: path of a local torchvision-format state dict, or ``None`` for random init.
            Nothing is ever downloaded.
        trainable_stages: how many of the last stages train, counted in the order layer4, layer3,
            layer2, layer1, stem (0..5). The default 3 freezes the stem and layer1. Ignored by
            ``resnet_small``, which trains everything.
        frozen_batchnorm: use :class:`~torchvision.ops.FrozenBatchNorm2d` (statistics and affine stored
            as buffers). Ignored by ``resnet_small``, which always uses trainable BatchNorm.
        dilation: DC5 variant, replacing the stride of layer4 by dilation (output stride 16).
            Only for bottleneck networks (resnet50 and larger).
        return_stages: stages (1..4) whose feature maps are returned, in increasing order.
        stage_widths: ``resnet_small`` only: channels of layer1..4 (default ``[32, 64, 128, 256]``).
        stage_blocks: ``resnet_small`` only: BasicBlocks per stage (default ``[1, 1, 1, 1]``).
            ``resnet_custom`` requires both ``stage_widths`` and ``stage_blocks``.
        stem_width: ``resnet_custom`` only: channels of the stem (default 64).
        block_type: ``resnet_custom`` only: ``"basic"`` or ``"bottleneck"`` blocks.
        channels_last: keep the convolution weights, and give the network its images, in the
            channels-last layout ([B, H, W, C] in memory): oneDNN and cuDNN then run their
            convolutions without converting layouts on every call (ResNet-50 inference on a 2-core
            CPU: a quarter less time; DECISIONS.md). The returned features are channels-last too.
            Values are the same up to the convolution algorithms' rounding.

    Attributes:
        num_channels: channels of each returned stage.
        strides: overall stride of each returned stage w.r.t. the input image.
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: str | None = None,
        trainable_stages: int = 3,
        frozen_batchnorm: bool = True,
        dilation: bool = False,
        return_stages: Sequence[int] = (4,),
        stage_widths: Sequence[int] | None = None,
        stage_blocks: Sequence[int] | None = None,
        stem_width: int = 64,
        block_type: str = "bottleneck",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        return_stages = sorted({int(s) for s in return_stages})
        if not return_stages or not all(1 <= s <= 4 for s in return_stages):
            raise ValueError(f"return_stages must be a non-empty subset of 1..4, got {return_stages}")
        if not 0 <= trainable_stages <= 5:
            raise ValueError(
                f"trainable_stages must be in 0..5 (layer4, layer3, layer2, layer1, stem), got {trainable_stages}"
            )
        weights_file = None if pretrained is None else _pretrained_file(pretrained, name)
        self.name = name
        self.return_stages = return_stages

        if name == SMALL_RESNET:
            if dilation:
                raise ValueError(
                    "dilation (DC5) is not supported by resnet_small, whose BasicBlocks cannot dilate"
                )
            widths = [int(w) for w in (stage_widths or (32, 64, 128, 256))]
            blocks = [int(b) for b in (stage_blocks or (1, 1, 1, 1))]
            if len(widths) != 4 or len(blocks) != 4 or min(widths) < 1 or min(blocks) < 1:
                raise ValueError(
                    f"stage_widths and stage_blocks need 4 positive ints each, got {widths} and {blocks}"
                )
            model: nn.Module = SmallResNet(widths, blocks)
        elif name == CUSTOM_RESNET:
            if stage_widths is None or stage_blocks is None:
                raise ValueError(f"name='{CUSTOM_RESNET}' needs stage_widths and stage_blocks (4 ints each)")
            model = ConfigurableResNet(
                stem_width,
                [int(w) for w in stage_widths],
                [int(b) for b in stage_blocks],
                block_type,
                norm_layer=FrozenBatchNorm2d if frozen_batchnorm else nn.BatchNorm2d,
                dilation=dilation,
            )
        elif name in TORCHVISION_RESNETS:
            if stage_widths is not None or stage_blocks is not None:
                raise ValueError(
                    f"stage_widths/stage_blocks only apply to name='{SMALL_RESNET}', not {name!r}; drop them"
                )
            if dilation and name in BASIC_BLOCK_RESNETS:
                raise ValueError(
                    f"dilation (DC5) needs a bottleneck ResNet (resnet50 or larger); {name!r} uses BasicBlock"
                )
            model = torchvision.models.get_model(
                name,
                weights=None,
                norm_layer=FrozenBatchNorm2d if frozen_batchnorm else nn.BatchNorm2d,
                replace_stride_with_dilation=[False, False, dilation],
            )
        else:
            raise ValueError(
                f"unknown backbone name {name!r}; choose one of "
                f"{[*TORCHVISION_RESNETS, SMALL_RESNET, CUSTOM_RESNET]}"
            )

        if weights_file is not None:
            _load_pretrained(model, weights_file, name)
        # Each frozen BatchNorm becomes part of the convolution before it (same keys, same values).
        fold_frozen_batchnorm(model)

        self.num_channels = [_stage_out_channels(getattr(model, f"layer{s}")) for s in return_stages]
        self.strides = [4 * 2 ** (s - 1) for s in return_stages]
        if dilation and 4 in return_stages:
            self.strides[-1] = 16

        # Keeps the stem and layers up to the deepest returned stage; avgpool/fc are dropped.
        self.body = IntermediateLayerGetter(model, return_layers={f"layer{s}": str(s) for s in return_stages})

        if name != SMALL_RESNET:
            self._freeze(trainable_stages)
        self.channels_last = channels_last
        if channels_last:
            self.body.to(memory_format=torch.channels_last)

    def _freeze(self, trainable_stages: int) -> None:
        trainable = _TRAINABLE_ORDER[:trainable_stages]
        prefixes = tuple(f"{t}." for t in trainable if t != "stem")
        if "stem" in trainable:
            prefixes += _STEM_MODULES
        for pname, param in self.body.named_parameters():
            if not pname.startswith(prefixes):
                param.requires_grad_(False)

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Compute feature maps and their masks.

        Args:
            images: float [B, 3, H, W].
            mask: bool [B, H, W], True on padding.

        Returns:
            One ``(features [B, C_s, h_s, w_s], mask [B, h_s, w_s] bool)`` pair per returned stage, in
            ``return_stages`` order. Masks are resized with nearest interpolation.
        """
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.body(images)
        out = []
        for s in self.return_stages:
            feat = features[str(s)]
            out.append((feat, downsample_padding_mask(mask, feat.shape[-2:])))
        return out
