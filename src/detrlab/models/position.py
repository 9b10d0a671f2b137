"""2-D positional encodings for image feature maps, computed from the padding mask."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding of the (y, x) position of each valid feature-map cell.

    Positions are 1-based cumulative counts over the *valid* (unpadded) region, so an image gets the
    same encoding whatever padding its batch adds. With ``normalize`` the positions are divided by the
    valid extent of their row/column and multiplied by ``scale``, mapping each image onto ``(0, scale]``.

    Args:
        num_pos_feats: features per axis; the output has ``2 * num_pos_feats`` channels.
        temperature: base of the geometric frequency progression.
        normalize: divide positions by the valid height/width before encoding.
        scale: range of normalized positions (only with ``normalize``).
        offset: added to positions before normalizing (-0.5 centres them on the cells, as the deformable
            detectors do).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset

    def forward(self, mask: Tensor) -> Tensor:
        """Encode positions.

        Args:
            mask: bool [B, h, w], True on padding.

        Returns:
            float [B, 2 * num_pos_feats, h, w]: y features first, then x features; within each, channel
            ``2i`` is ``sin(p / T^(2i/n))`` and ``2i + 1`` is ``cos(p / T^(2i/n))``.
        """
        valid = ~mask
        y = valid.cumsum(1, dtype=torch.float32)
        x = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            # The last row/column of the cumulative sum is the valid extent of that column/row.
            y = (y + self.offset) / (y[:, -1:, :] + eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + eps) * self.scale

        n = self.num_pos_feats
        exponent = 2 * torch.div(torch.arange(n, device=mask.device), 2, rounding_mode="floor") / n
        dim_t = self.temperature ** exponent.float()
        pos_y = self._sin_cos(y[..., None] / dim_t)
        pos_x = self._sin_cos(x[..., None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    @staticmethod
    def _sin_cos(angles: Tensor) -> Tensor:
        """[B, h, w, n] angles (pairs share a frequency) -> interleaved sin/cos [B, h, w, n]."""
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute encoding: one embedding per row index and one per column index.

    Args:
        num_pos_feats: features per axis; the output has ``2 * num_pos_feats`` channels.
        max_size: largest supported feature-map height and width.
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50) -> None:
        super().__init__()
        self.max_size = max_size
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """Encode positions.

        Args:
            mask: bool [B, h, w] (only its shape is used: learned positions ignore padding).

        Returns:
            float [B, 2 * num_pos_feats, h, w]: column (x) features first, then row (y) features.
        """
        b, h, w = mask.shape
        if h > self.max_size or w > self.max_size:
            raise ValueError(
                f"feature map {h}x{w} exceeds the learned position table ({self.max_size}); "
                "raise max_size or use the 'sine' encoding"
            )
        x_emb = self.col_embed.weight[:w]  # [w, n]
        y_emb = self.row_embed.weight[:h]  # [h, n]
        pos = torch.cat((x_emb[None].expand(h, -1, -1), y_emb[:, None].expand(-1, w, -1)), dim=-1)
        return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1)


def build_position_encoding(kind: str, num_pos_feats: int) -> nn.Module:
    """Build the positional encoding named ``kind`` ("sine" or "learned") with ``num_pos_feats`` per axis."""
    if kind == "sine":
        return PositionEmbeddingSine(num_pos_feats, normalize=True)
    if kind == "learned":
        return PositionEmbeddingLearned(num_pos_feats)
    raise ValueError(f"unknown position encoding {kind!r}; choose 'sine' or 'learned'")
