"""A torchvision-layout ResNet with free stem width, stage widths, depths and block type.

torchvision fixes the widths of its ResNets (64 / 256-2048); imported checkpoints may use other
widths (small test models, width-reduced variants). This network keeps torchvision's module names
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0`` ...), its 7x7 stride-2 stem and its
stride-on-3x3 bottleneck, so the backbone's feature extraction and freezing apply unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

BLOCK_TYPES = ("basic", "bottleneck")


class ConfigurableResNet(nn.Module):
    """ResNet of four stages with chosen widths.

    Args:
        stem_width: channels of the 7x7 stem convolution.
        stage_widths: output channels of ``layer1..layer4``. Bottleneck widths must be divisible by 4
            (the inner 3x3 convolution has a quarter of the output channels).
        stage_blocks: blocks per stage.
        block_type: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1-3x3-1x1, stride on the 3x3).
        norm_layer: normalization constructor, e.g. ``FrozenBatchNorm2d``.
        dilation: replace the stride of ``layer4`` by dilation (DC5; bottleneck only).
    """

    def __init__(
        self,
        stem_width: int,
        stage_widths: Sequence[int],
        stage_blocks: Sequence[int],
        block_type: str = "bottleneck",
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        dilation: bool = False,
    ) -> None:
        super().__init__()
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        if len(stage_widths) != 4 or len(stage_blocks) != 4 or min(stage_blocks) < 1 or stem_width < 1:
            raise ValueError(
                f"need a positive stem_width and 4 stage widths and depths, got {stem_width}, "
                f"{list(stage_widths)}, {list(stage_blocks)}"
            )
        bottleneck = block_type == "bottleneck"
        if bottleneck and any(w % Bottleneck.expansion for w in stage_widths):
            raise ValueError(f"bottleneck stage widths must be divisible by 4, got {list(stage_widths)}")
        if dilation and not bottleneck:
            raise ValueError("dilation (DC5) needs bottleneck blocks; basic blocks cannot dilate")
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = stem_width
        for i, (width, blocks) in enumerate(zip(stage_widths, stage_blocks)):
            dilate = dilation and i == 3
            stride = 1 if i == 0 or dilate else 2
            self.add_module(
                f"layer{i + 1}",
                self._make_stage(
                    in_ch, int(width), int(blocks), stride, bottleneck, norm_layer, 2 if dilate else 1
                ),
            )
            in_ch = int(width)

    @staticmethod
    def _make_stage(
        in_ch: int,
        width: int,
        blocks: int,
        stride: int,
        bottleneck: bool,
        norm_layer: Callable[[int], nn.Module],
        dilation: int,
    ) -> nn.Sequential:
        block = Bottleneck if bottleneck else BasicBlock
        planes = width // block.expansion
        downsample = None
        if stride != 1 or in_ch != width:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size=1, stride=stride, bias=False), norm_layer(width)
            )
        # As torchvision: a dilated stage keeps dilation 1 in its first block (which held the stride).
        layers = [block(in_ch, planes, stride=stride, downsample=downsample, norm_layer=norm_layer)]
        layers += [block(width, planes, norm_layer=norm_layer, dilation=dilation) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)
