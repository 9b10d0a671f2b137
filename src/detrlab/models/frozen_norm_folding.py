"""Frozen BatchNorm folded into the convolution in front of it.

A frozen BatchNorm is a fixed per-channel affine map ``y * scale + shift``. Applied to a convolution's
output it equals one convolution with weight ``W * scale`` and bias ``shift``, so the backbone runs one
oneDNN / cuDNN call per convolution instead of a convolution plus a full pass over its output (and,
in training, a second pass in backward). The scaled weight is recomputed from the live parameters and
buffers in every forward, so training the convolution, loading a state dict or moving the model works
as before, and the state-dict keys do not change: the BatchNorm stays registered where it was, holding
its buffers, and becomes the identity in the forward pass.
"""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["FoldedFrozenBatchNorm2d", "NormFoldedConv2d", "fold_frozen_batchnorm"]


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BatchNorm whose affine map the preceding :class:`NormFoldedConv2d` applies; its own
    forward is the identity. Buffers and state-dict keys are those of
    :class:`torchvision.ops.FrozenBatchNorm2d`."""

    def affine(self) -> tuple[Tensor, Tensor]:
        """(scale [C], shift [C]) of the map ``x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        return x


class NormFoldedConv2d(nn.Conv2d):
    """A ``Conv2d`` followed by the frozen BatchNorm in ``self.norm``, computed as one convolution."""

    norm: FoldedFrozenBatchNorm2d

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C_in, H, W] -> [B, C_out, H', W'], equal to ``norm(conv(x))``."""
        scale, shift = self.norm.affine()
        weight = self.weight * scale.view(-1, 1, 1, 1)
        bias = shift if self.bias is None else shift + self.bias * scale
        return self._conv_forward(x, weight, bias)


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Fold every frozen BatchNorm registered right after a ``Conv2d`` of the same parent into it.

    Meant for ResNet-style modules (torchvision's ResNet, ``BasicBlock``, ``Bottleneck`` and their
    ``downsample`` pairs), where each ``convK`` is registered just before the ``bnK`` that its output
    goes through, with nothing in between. The modules are changed in place (same parameter and
    buffer tensors). Returns the number of pairs folded.
    """
    folded = 0
    for parent in model.modules():
        for conv, norm in pairwise(parent.children()):
            if (
                type(conv) is nn.Conv2d
                and isinstance(norm, FrozenBatchNorm2d)
                and norm.weight.numel() == conv.out_channels
            ):
                # Re-classed in place: the parameters, buffers and registration stay as they are.
                norm.__class__ = FoldedFrozenBatchNorm2d
                conv.__class__ = NormFoldedConv2d
                # Not registered as a submodule: the BatchNorm's state-dict keys stay its own.
                object.__setattr__(conv, "norm", norm)
                folded += 1
    return folded
