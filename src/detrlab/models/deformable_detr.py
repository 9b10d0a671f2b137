"""Deformable DETR and DETA detectors: multi-scale backbone, deformable transformer, sigmoid class heads."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import MLP

from detrlab.models.deformable_transformer import DeformableTransformer
from detrlab.models.geometry import refine_boxes
from detrlab.models.input_projection import MultiScaleProjection
from detrlab.models.inputs import check_detector_inputs
from detrlab.models.position import PositionEmbeddingSine
from detrlab.models.set_detector import SetDetector

__all__ = ["DETA", "DeformableDETR"]


class DeformableDETR(SetDetector):
    """Deformable DETR (Zhu et al. 2021) with optional box refinement and two-stage queries.

    Class logits are per-class sigmoid logits (focal loss), with no "no object" column.

    Args:
        backbone: module with ``forward(images, mask) -> list[(features, mask)]`` and ``num_channels``
            (e.g. a ResNet returning stages 2-4, or :class:`~detrlab.models.swin.SwinBackbone`).
        num_classes: object classes C.
        num_queries: decoder queries (two-stage: selected proposals; capped at the token count).
        hidden_dim, nheads, num_decoder_layers: transformer width, heads and decoder depth.
        num_feature_levels: levels; extra stride-2 levels are added after the backbone's.
        with_box_refine: every decoder layer refines the previous layer's boxes with its own heads.
        two_stage: queries from the encoder's best proposals (needs ``with_box_refine``).
        aux_loss: return the predictions of earlier decoder layers in ``aux_outputs``.
        **transformer_options: the other :class:`~detrlab.models.deformable_transformer.DeformableTransformer`
            arguments, with its defaults: ``num_encoder_layers``, ``dim_feedforward``, ``dropout``,
            ``enc_n_points`` / ``dec_n_points`` (sampling points per head and level),
            ``add_proposal_features`` and ``assign_first_stage`` (DETA: proposal features in the queries,
            per-level NMS proposal selection with ``pre_nms_topk`` / ``proposal_nms_iou``),
            ``attention_implementation`` ("auto" / "pytorch" / "compiled" / "triton") and ``encoder_ffn_recompute``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_queries: int = 300,
        hidden_dim: int = 256,
        nheads: int = 8,
        num_decoder_layers: int = 6,
        num_feature_levels: int = 4,
        with_box_refine: bool = False,
        two_stage: bool = False,
        aux_loss: bool = True,
        **transformer_options: Any,
    ) -> None:
        super().__init__(backbone, num_classes, num_queries, hidden_dim, aux_loss)
        if two_stage and not with_box_refine:
            raise ValueError(
                "two_stage=True needs with_box_refine=True: the encoder proposal head is the extra, "
                "unshared box head that refinement creates"
            )
        # Positions centred on the cells (offset -0.5), normalized to the valid extent.
        self.position_encoding = PositionEmbeddingSine(hidden_dim // 2, normalize=True, offset=-0.5)
        self.input_proj = MultiScaleProjection(backbone.num_channels, hidden_dim, num_feature_levels)
        if getattr(backbone, "channels_last", False):
            # its convolutions take channels-last features: weights in the same layout, or oneDNN
            # converts them on every call
            self.input_proj.to(memory_format=torch.channels_last)
        self.transformer = DeformableTransformer(
            d_model=hidden_dim,
            nhead=nheads,
            num_decoder_layers=num_decoder_layers,
            num_feature_levels=num_feature_levels,
            num_queries=num_queries,
            two_stage=two_stage,
            **transformer_options,
        )
        class_head = nn.Linear(hidden_dim, num_classes)
        # Focal-loss prior: every class starts at probability 0.01 so the many negatives do not swamp training.
        nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))
        box_head = MLP(hidden_dim, [hidden_dim, hidden_dim, 4])
        nn.init.zeros_(box_head[-2].weight)
        nn.init.zeros_(box_head[-2].bias)
        # Without two-stage the first boxes are learned points: start them small (sigmoid(-2) ~ 0.12).
        if not two_stage:
            nn.init.constant_(box_head[-2].bias[2:], -2.0)
        # Refinement: one head per decoder layer (+1 for the encoder with two-stage); else one shared head.
        num_heads = (num_decoder_layers + int(two_stage)) if with_box_refine else 1
        self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_heads))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_heads))
        self.num_decoder_layers = num_decoder_layers
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage

    def _head(self, heads: nn.ModuleList, layer: int) -> nn.Module:
        return heads[layer] if self.with_box_refine else heads[0]

    def forward(self, images: Tensor, mask: Tensor) -> dict:
        """Detect objects in ``images`` with padding ``mask`` (shapes in :class:`SetDetector`).

        Returns:
            dict with
              - ``pred_logits`` [B, Q, C] sigmoid class logits (no "no object" column),
              - ``pred_boxes`` [B, Q, 4] sigmoid cxcywh relative to the unpadded image,
              - ``aux_outputs``: ``pred_logits`` / ``pred_boxes`` dicts of decoder layers 0..L-2
                (empty when ``aux_loss`` is False),
              - two-stage only: ``enc_outputs`` = dict(``pred_logits`` [B, S, C] encoder logits of all
                S tokens, ``pred_boxes`` [B, S, 4] refined proposals (sigmoid cxcywh), ``anchors``
                [B, S, 4] the unrefined anchors (sigmoid cxcywh), ``valid`` bool [B, S]: False for
                padded tokens and tokens whose anchor leaves (0.01, 0.99); their ``anchors`` and
                ``pred_boxes`` are (1, 1, 1, 1) and assigners must ignore them) and ``init_reference``
                [B, Q, 4] the decoder's input proposal boxes (sigmoid cxcywh, detached).
              Q is ``min(num_queries, S)`` with two-stage.
        """
        check_detector_inputs(images, mask)
        levels = self.input_proj(self.backbone(images, mask), mask)
        srcs = [feat for feat, _ in levels]
        masks = [m for _, m in levels]
        pos = [self.position_encoding(m).to(feat.dtype) for feat, m in levels]
        num_dec = self.num_decoder_layers
        refine_heads = list(self.bbox_embed[:num_dec]) if self.with_box_refine else None
        enc_index = num_dec if self.two_stage else None
        t = self.transformer(
            srcs,
            masks,
            pos,
            decoder_box_heads=refine_heads,
            encoder_class_head=self.class_embed[enc_index] if enc_index is not None else None,
            encoder_box_head=self.bbox_embed[enc_index] if enc_index is not None else None,
        )

        logits, boxes = [], []
        for lid in range(num_dec):
            hidden = t["hidden"][lid]
            box_unact = refine_boxes(self._head(self.bbox_embed, lid)(hidden), t["references"][lid])
            logits.append(self._head(self.class_embed, lid)(hidden))
            boxes.append(box_unact.sigmoid())
        out = self.decoder_predictions(logits, boxes)
        if self.two_stage:
            out["enc_outputs"] = {
                "pred_logits": t["enc_logits"],
                "pred_boxes": t["enc_boxes_unact"].sigmoid(),
                "anchors": t["anchors_unact"].sigmoid(),
                "valid": t["valid"],
            }
            out["init_reference"] = t["init_reference"]
        return out


class DETA(DeformableDETR):
    """DETA (Ouyang-Zhang et al. 2022): two-stage Deformable DETR with box refinement whose queries
    also carry the selected proposals' encoder features.

    Those three are what makes the architecture DETA, so they are not arguments. Its training
    assigns predictions by IoU and selects the proposals by per-level NMS (``assign_first_stage``,
    switched on by ``model/assigner=deta``); without NMS selection it is the "improved Deformable
    DETR" baseline. The paper's sizes (900 queries, 5 levels, FFN 2048, no dropout) are the
    ``conf/model/deta_r50.yaml`` recipe; every other argument is :class:`DeformableDETR`'s.
    """

    #: The architecture choices that define DETA.
    DEFINING_OPTIONS = {"with_box_refine": True, "two_stage": True, "add_proposal_features": True}

    def __init__(self, backbone: nn.Module, num_classes: int, **options: Any) -> None:
        fixed = sorted(set(options) & set(self.DEFINING_OPTIONS))
        if fixed:
            raise ValueError(
                f"DETA got {', '.join(fixed)}: DETA is always two-stage with box refinement and proposal "
                "features; for other variants use DeformableDETR (model=deformable_detr_r50)"
            )
        super().__init__(backbone, num_classes, **self.DEFINING_OPTIONS, **options)
