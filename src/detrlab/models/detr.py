"""DETR: a CNN backbone, a transformer encoder-decoder and set-prediction heads."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.ops import MLP

from detrlab.models.inputs import check_detector_inputs
from detrlab.models.position import build_position_encoding
from detrlab.models.set_detector import SetDetector
from detrlab.models.transformer import Transformer


class DETR(SetDetector):
    """DEtection TRansformer.

    The last stage returned by ``backbone`` is projected to ``hidden_dim``, encoded with its positional
    encoding, and decoded by ``num_queries`` learned queries into class logits and boxes.

    Args:
        backbone: module with ``forward(images, mask) -> list[(features, mask)]`` and a ``num_channels``
            list (e.g. :class:`~detrlab.models.backbone.ResNetBackbone`).
        num_classes: number of object classes; one extra "no object" logit is appended.
        num_queries: number of object queries (maximum detections per image).
        hidden_dim: transformer width.
        nheads: attention heads.
        position_encoding: "sine" or "learned".
        aux_loss: also return predictions of the earlier decoder layers (``aux_outputs``).
        **transformer_options: the other :class:`~detrlab.models.transformer.Transformer` arguments,
            with its defaults: ``num_encoder_layers`` (6), ``num_decoder_layers`` (6),
            ``dim_feedforward`` (2048), ``dropout`` (0.1), ``normalize_before`` (False) and
            ``activation`` ("relu").
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_queries: int = 100,
        hidden_dim: int = 256,
        nheads: int = 8,
        position_encoding: str = "sine",
        aux_loss: bool = True,
        **transformer_options: Any,
    ) -> None:
        super().__init__(backbone, num_classes, num_queries, hidden_dim, aux_loss)
        self.position_encoding = build_position_encoding(position_encoding, hidden_dim // 2)
        self.transformer = Transformer(d_model=hidden_dim, nhead=nheads, **transformer_options)
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, [hidden_dim, hidden_dim, 4])

    def forward(self, images: Tensor, mask: Tensor) -> dict:
        """Detect objects in ``images`` with padding ``mask`` (shapes in :class:`SetDetector`).

        Returns:
            dict with
              - ``pred_logits`` [B, Q, num_classes + 1] (last index = no object),
              - ``pred_boxes`` [B, Q, 4] sigmoid (cx, cy, w, h) relative to the unpadded image,
              - ``aux_outputs``: list of ``num_decoder_layers - 1`` dicts with ``pred_logits`` and
                ``pred_boxes`` of the earlier decoder layers (empty when ``aux_loss`` is False).
        """
        check_detector_inputs(images, mask)
        features, feat_mask = self.backbone(images, mask)[-1]
        pos = self.position_encoding(feat_mask).to(features.dtype)
        hs, _ = self.transformer(self.input_proj(features), feat_mask, self.query_embed.weight, pos)

        logits = self.class_embed(hs)  # [L, B, Q, C+1]
        boxes = self.bbox_embed(hs).sigmoid()  # [L, B, Q, 4]
        return self.decoder_predictions(logits, boxes)
