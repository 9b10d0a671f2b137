"""The deformable transformer: multi-level encoder, query preparation (learned or two-stage), decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detrlab.models.deformable_attention import MultiScaleDeformableAttention
from detrlab.models.deformable_layers import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
)
from detrlab.models.geometry import level_valid_ratios
from detrlab.models.initialization import xavier_uniform_weight_matrices
from detrlab.models.proposals import (
    EncoderProposals,
    encoder_anchors,
    proposal_position_embedding,
    select_two_stage_proposals,
)


class DeformableTransformer(nn.Module):
    """Encoder over all levels and decoder over ``num_queries`` queries.

    Queries come either from a learned embedding (``two_stage=False``: content + position, reference
    points predicted from the position) or from the encoder (``two_stage=True``): every token gets
    an anchor box, the encoder heads score and refine it, and the selected boxes give the decoder's
    reference boxes and, through ``pos_trans``, its query position and content. With
    ``add_proposal_features`` (DETA) the selected tokens' memory features are added to the content.

    Args:
        d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout: sizes.
        num_feature_levels: levels the attention samples from.
        enc_n_points, dec_n_points: sampling points per head and level.
        num_queries: decoder queries (two-stage: proposals to select).
        two_stage: encoder proposals as queries.
        add_proposal_features: add ``pix_trans`` of the proposals' memory features to the content.
        assign_first_stage: select proposals with per-level NMS (DETA) instead of plain top-k.
        pre_nms_topk, proposal_nms_iou: NMS-selection settings.
        attention_implementation: see :class:`MultiScaleDeformableAttention`.
        encoder_ffn_recompute: number of encoder layers (the first ones; a count above
            ``num_encoder_layers`` means all of them, so a config that shrinks the encoder keeps
            working) whose feed-forward hidden activation is recomputed in backward instead of kept:
            less training memory (about ``B * S * dim_feedforward * 4`` bytes per layer) for one
            extra ``linear1`` per layer; results are unchanged.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        num_queries: int = 300,
        two_stage: bool = False,
        add_proposal_features: bool = False,
        assign_first_stage: bool = False,
        pre_nms_topk: int = 1000,
        proposal_nms_iou: float = 0.9,
        attention_implementation: str = "auto",
        encoder_ffn_recompute: int = 0,
    ) -> None:
        super().__init__()
        if encoder_ffn_recompute < 0:
            raise ValueError(
                f"encoder_ffn_recompute counts encoder layers and must be >= 0, got {encoder_ffn_recompute}"
            )
        if (add_proposal_features or assign_first_stage) and not two_stage:
            raise ValueError(
                "add_proposal_features and assign_first_stage need two_stage=True (they act on encoder proposals)"
            )
        self.d_model = d_model
        self.num_feature_levels = num_feature_levels
        self.num_queries = num_queries
        self.two_stage = two_stage
        self.assign_first_stage = assign_first_stage
        self.pre_nms_topk = pre_nms_topk
        self.proposal_nms_iou = proposal_nms_iou

        def attention(num_points: int) -> MultiScaleDeformableAttention:
            return MultiScaleDeformableAttention(
                d_model, nhead, num_feature_levels, num_points, attention_implementation
            )

        self.encoder = DeformableEncoder(
            DeformableEncoderLayer(attention(enc_n_points), dim_feedforward, dropout), num_encoder_layers
        )
        for layer in self.encoder.layers[:encoder_ffn_recompute]:
            layer.ffn.recompute_hidden = True
        self.decoder = DeformableDecoder(
            DeformableDecoderLayer(attention(dec_n_points), dim_feedforward, dropout), num_decoder_layers
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
            if add_proposal_features:
                self.pix_trans = nn.Linear(d_model, d_model)
                self.pix_trans_norm = nn.LayerNorm(d_model)
        else:
            self.query_embed = nn.Embedding(num_queries, 2 * d_model)
            self.reference_points = nn.Linear(d_model, 2)
        self.add_proposal_features = add_proposal_features
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_uniform_weight_matrices(self)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
            nn.init.normal_(self.query_embed.weight)
        nn.init.normal_(self.level_embed)

    #: ``[B, L, 2]`` valid (unpadded) fraction (w, h) of each level's mask.
    valid_ratios = staticmethod(level_valid_ratios)

    def forward(
        self,
        srcs: Sequence[Tensor],
        masks: Sequence[Tensor],
        pos_embeds: Sequence[Tensor],
        decoder_box_heads: Sequence[nn.Module] | None = None,
        encoder_class_head: nn.Module | None = None,
        encoder_box_head: nn.Module | None = None,
    ) -> dict[str, Tensor | list[Tensor]]:
        """Encode the levels and decode the queries.

        Args:
            srcs: per level [B, D, h_l, w_l]; masks: per level bool [B, h_l, w_l] (True on padding);
            pos_embeds: per level [B, D, h_l, w_l].
            decoder_box_heads: per-layer box heads for iterative refinement (None: no refinement).
            encoder_class_head, encoder_box_head: heads scoring / refining every token's anchor
                (required with two_stage).

        Returns:
            dict with ``hidden`` [L_dec, B, Q, D], ``references`` (list of per-layer input references
            [B, Q, 2|4], sigmoid space), and for two-stage ``enc_logits`` [B, S, C], ``enc_boxes_unact``
            [B, S, 4], ``anchors_unact`` [B, S, 4] (+inf on invalid tokens), ``valid`` bool [B, S],
            ``init_reference`` [B, Q, 4].
        """
        if len(srcs) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(srcs)}")
        spatial_shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        mask_flat = torch.cat([mask.flatten(1) for mask in masks], 1)
        pos_flat = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[lvl] for lvl, pos in enumerate(pos_embeds)], 1
        )
        valid_ratios = self.valid_ratios(masks).to(src_flat.dtype)
        memory = self.encoder(src_flat, pos_flat, spatial_shapes, valid_ratios, mask_flat)

        out: dict[str, Tensor | list[Tensor]] = {}
        b = memory.shape[0]
        if self.two_stage:
            if encoder_class_head is None or encoder_box_head is None:
                raise ValueError("two_stage needs encoder_class_head and encoder_box_head")
            anchors_unact, valid, level_ids = encoder_anchors(mask_flat, spatial_shapes)
            features = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid[..., None], 0.0)))
            enc_logits = encoder_class_head(features)
            enc_boxes_unact = encoder_box_head(features) + anchors_unact.to(features.dtype)
            # Class-agnostic objectness: the first class column, as the encoder loss trains it.
            proposals = EncoderProposals(enc_logits[..., 0], enc_boxes_unact.sigmoid(), valid, level_ids)
            index = select_two_stage_proposals(
                proposals,
                len(spatial_shapes),
                self.num_queries,
                use_nms=self.assign_first_stage,
                pre_nms_topk=self.pre_nms_topk,
                nms_iou=self.proposal_nms_iou,
                level_sizes=[h * w for h, w in spatial_shapes],
            )
            boxes_unact = enc_boxes_unact.gather(1, index[..., None].expand(-1, -1, 4)).detach()
            reference_points = boxes_unact.sigmoid()
            query_pos, tgt = self.pos_trans_norm(
                self.pos_trans(proposal_position_embedding(boxes_unact, self.d_model // 2))
            ).split(self.d_model, -1)
            if self.add_proposal_features:
                picked = features.gather(1, index[..., None].expand(-1, -1, self.d_model)).detach()
                tgt = tgt + self.pix_trans_norm(self.pix_trans(picked))
            out.update(
                enc_logits=enc_logits,
                enc_boxes_unact=enc_boxes_unact,
                anchors_unact=anchors_unact,
                valid=valid,
                init_reference=reference_points,
            )
        else:
            query_pos, tgt = self.query_embed.weight.split(self.d_model, -1)
            query_pos = query_pos[None].expand(b, -1, -1)
            tgt = tgt[None].expand(b, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()

        hidden, references = self.decoder(
            tgt,
            query_pos,
            reference_points,
            memory,
            spatial_shapes,
            valid_ratios,
            mask_flat,
            decoder_box_heads,
        )
        out.update(hidden=hidden, references=references)
        return out
