"""Swin Transformer backbones (timm) returning multi-stage feature maps and their padding masks."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch.nn.functional as F
from torch import Tensor, nn

from detrlab.models.geometry import downsample_padding_mask
from detrlab.models.weights_file import require_weights_file

# Architecture hyper-parameters live in timm's model names; these are the ones the configs use.
SWIN_MODELS = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window12_384",
    "swin_l": "swin_large_patch4_window12_384",
}


class SwinBackbone(nn.Module):
    """Swin Transformer feature extractor returning ``(features, mask)`` for stages 2-4 (strides 8/16/32).

    Each returned stage gets its own LayerNorm, as detection Swin backbones do (the classifier's
    final norm only covers the last stage). Images are padded on the right/bottom to a multiple of
    the patch size; the padding is marked in the returned masks.

    Args:
        name: ``swin_t`` / ``swin_s`` / ``swin_b`` / ``swin_l`` or any timm Swin model name.
            ``swin_l`` is Swin-L (embed 192, depths 2-2-18-2, heads 6-12-24-48, window 12), channels
            384/768/1536 at strides 8/16/32.
        pretrained: path of a local timm-format state dict, or ``None`` for random init. Nothing is
            ever downloaded.
        return_stages: stages (1..4; stage 1 has stride 4) whose feature maps are returned.
        drop_path_rate: stochastic depth rate (0.3 for Swin-L in the DETA recipe).
        gradient_checkpointing: recompute block activations in backward to save memory.
        embed_dim, depths, num_heads, window_size, pretrain_img_size: architecture overrides of the
            timm model (``None`` keeps the named model's); imported checkpoints of non-standard Swins
            use them. ``pretrain_img_size`` fixes the stage resolutions that timm derives window
            sizes from (a stage smaller than the window gets a smaller window, as in Swin).
    """

    def __init__(
        self,
        name: str = "swin_l",
        pretrained: str | None = None,
        return_stages: Sequence[int] = (2, 3, 4),
        drop_path_rate: float = 0.3,
        gradient_checkpointing: bool = False,
        embed_dim: int | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        window_size: int | None = None,
        pretrain_img_size: int | None = None,
    ) -> None:
        super().__init__()
        return_stages = sorted({int(s) for s in return_stages})
        if not return_stages or not all(1 <= s <= 4 for s in return_stages):
            raise ValueError(f"return_stages must be a non-empty subset of 1..4, got {return_stages}")
        timm_name = SWIN_MODELS.get(name, name)
        if not timm.is_model(timm_name) or "swin" not in timm_name:
            raise ValueError(
                f"unknown Swin backbone {name!r}; choose one of {sorted(SWIN_MODELS)} or a timm Swin name"
            )
        kwargs: dict = {}
        architecture = {
            "embed_dim": embed_dim,
            "depths": None if depths is None else tuple(int(d) for d in depths),
            "num_heads": None if num_heads is None else tuple(int(h) for h in num_heads),
            "window_size": window_size,
            "img_size": pretrain_img_size,
        }
        kwargs.update({key: value for key, value in architecture.items() if value is not None})
        if pretrained is not None:
            file = require_weights_file(pretrained, "Swin", f"the timm checkpoint of {timm_name!r}")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(file)})
        self.body = timm.create_model(
            timm_name,
            features_only=True,
            out_indices=tuple(s - 1 for s in return_stages),
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **kwargs,
        )
        if gradient_checkpointing:
            self.body.set_grad_checkpointing(True)
        self.patch_size = self.body.patch_embed.patch_size[0]
        self.return_stages = return_stages
        self.num_channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.num_channels)

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Compute feature maps and their masks.

        Args:
            images: float [B, 3, H, W].
            mask: bool [B, H, W], True on padding.

        Returns:
            One ``(features [B, C_s, h_s, w_s], mask [B, h_s, w_s] bool)`` pair per returned stage.
        """
        h, w = images.shape[-2:]
        pad_h, pad_w = -h % self.patch_size, -w % self.patch_size
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=True)
        out = []
        for feat, norm in zip(self.body(images), self.norms):
            # timm Swin stages are channels-last.
            feat = norm(feat).permute(0, 3, 1, 2).contiguous()
            out.append((feat, downsample_padding_mask(mask, feat.shape[-2:])))
        return out
