"""Project backbone stages to a common width and add coarser levels: the deformable detectors' feature pyramid."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detrlab.models.geometry import downsample_padding_mask


class MultiScaleProjection(nn.Module):
    """1x1 conv + GroupNorm per backbone stage, then 3x3 stride-2 conv + GroupNorm for each extra level.

    The first extra level is computed from the last backbone stage (its raw channels), each further
    one from the previous extra level.

    Args:
        in_channels: channels of the backbone stages used, finest first.
        hidden_dim: output width of every level.
        num_levels: total levels (>= 1). When smaller than ``len(in_channels)`` the *last*
            ``num_levels`` stages are used (single-scale = C5 only).
        num_groups: GroupNorm groups.
    """

    def __init__(
        self, in_channels: Sequence[int], hidden_dim: int, num_levels: int, num_groups: int = 32
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        if hidden_dim % num_groups:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be divisible by the GroupNorm groups ({num_groups})"
            )
        in_channels = list(in_channels)
        self.num_backbone_levels = min(num_levels, len(in_channels))
        self.first_stage = len(in_channels) - self.num_backbone_levels
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1), nn.GroupNorm(num_groups, hidden_dim))
            for c in in_channels[self.first_stage :]
        )
        extra = []
        prev = in_channels[-1]
        for _ in range(num_levels - self.num_backbone_levels):
            extra.append(
                nn.Sequential(
                    nn.Conv2d(prev, hidden_dim, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(num_groups, hidden_dim),
                )
            )
            prev = hidden_dim
        self.extra = nn.ModuleList(extra)
        for seq in [*self.lateral, *self.extra]:
            nn.init.xavier_uniform_(seq[0].weight, gain=1)
            nn.init.zeros_(seq[0].bias)

    def forward(
        self, features: Sequence[tuple[Tensor, Tensor]], image_mask: Tensor
    ) -> list[tuple[Tensor, Tensor]]:
        """Project stages and build extra levels.

        Args:
            features: backbone output, ``(features [B, C_s, h, w], mask [B, h, w])`` per stage.
            image_mask: bool [B, H, W] of the input images (True on padding), resized for extra levels.

        Returns:
            ``num_levels`` pairs ``(features [B, hidden_dim, h_l, w_l], mask [B, h_l, w_l])``, finest first.
        """
        used = features[self.first_stage :]
        out = [(proj(feat), mask) for proj, (feat, mask) in zip(self.lateral, used)]
        src = features[-1][0]
        for proj in self.extra:
            src = proj(src)
            mask = downsample_padding_mask(image_mask, src.shape[-2:])
            out.append((src, mask))
        return out
