"""Encoder and decoder stacks of the deformable transformer (post-norm layers, deformable attention)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detrlab.models.deformable_attention import MultiScaleDeformableAttention
from detrlab.models.fused_ffn import chunked_residual_linear_relu_linear, linear_relu_linear, wants_row_chunks
from detrlab.models.geometry import refine_boxes

__all__ = [
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DeformableEncoder",
    "DeformableEncoderLayer",
]


class ResidualFeedForward(nn.Module):
    """Linear -> ReLU -> dropout -> Linear -> dropout, added to the input, then LayerNorm.

    ``recompute_hidden`` (set per layer, see ``DeformableTransformer``'s ``encoder_ffn_recompute``)
    trades one extra ``linear1`` forward in backward for not keeping the ``[.., dim_feedforward]``
    hidden activation; results are unchanged. On a CPU, a block whose hidden activation would be
    large (the encoder's) and that applies no dropout is computed in blocks of rows and always
    recomputes (:func:`~detrlab.models.fused_ffn.chunked_residual_linear_relu_linear`): there that is
    both the faster and the smaller way, whatever ``recompute_hidden`` says.
    """

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.recompute_hidden = False

    def forward(self, x: Tensor) -> Tensor:
        """x [..., d_model] -> norm(x + linear2(relu(linear1(x)))) [..., d_model]."""
        dropout_active = self.training and (self.dropout1.p > 0 or self.dropout2.p > 0)
        if not dropout_active and wants_row_chunks(x, self.linear1.out_features):
            return self.norm(chunked_residual_linear_relu_linear(x, self.linear1, self.linear2))
        if self.training and torch.is_grad_enabled():
            projected = linear_relu_linear(
                x, self.linear1, self.linear2, self.dropout1.p, self.recompute_hidden
            )
        else:
            # in place: the fresh linear output is not needed by autograd (ReLU keeps its result)
            projected = self.linear2(self.dropout1(self.linear1(x).relu_()))
        return self.norm(x + self.dropout2(projected))


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward block (both post-norm).

    Args:
        self_attn: the deformable attention (its ``embed_dim`` is the layer's width).
        dim_feedforward, dropout: feed-forward width and dropout of every residual branch.
    """

    def __init__(
        self, self_attn: MultiScaleDeformableAttention, dim_feedforward: int = 1024, dropout: float = 0.1
    ) -> None:
        super().__init__()
        d_model = self_attn.embed_dim
        self.self_attn = self_attn
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = ResidualFeedForward(d_model, dim_feedforward, dropout)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        padding_mask: Tensor,
    ) -> Tensor:
        """src, pos [B, S, D]; reference_points [B, S, L, 2]; padding_mask bool [B, S] -> [B, S, D]."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableEncoder(nn.Module):
    """A stack of ``num_layers`` copies of ``layer``; every token attends around its own position."""

    def __init__(self, layer: DeformableEncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
        """Centre of every token, normalized by the valid extent of its own level, seen from every level.

        Args:
            spatial_shapes: (h_l, w_l) per level.
            valid_ratios: [B, L, 2] valid fraction (w, h) of each level.

        Returns:
            [B, S, L, 2] (x, y): token positions rescaled into each level's padded extent.
        """
        points = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            # arange + 0.5 (the same values as linspace(0.5, h - 0.5, h)) keeps h symbolic when exported
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
                torch.arange(w, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
                indexing="ij",
            )
            x = xs.reshape(1, -1) / (valid_ratios[:, None, lvl, 0] * w)
            y = ys.reshape(1, -1) / (valid_ratios[:, None, lvl, 1] * h)
            points.append(torch.stack((x, y), -1))
        return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        valid_ratios: Tensor,
        padding_mask: Tensor,
    ) -> Tensor:
        """src, pos [B, S, D]; valid_ratios [B, L, 2]; padding_mask bool [B, S] -> memory [B, S, D]."""
        reference_points = self.reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, padding_mask)
        return src


class DeformableDecoderLayer(nn.Module):
    """Query self-attention, deformable cross-attention into the encoder memory, feed-forward (post-norm).

    Args:
        cross_attn: the deformable attention into the memory (its ``embed_dim`` and ``num_heads``
            are also the query self-attention's).
        dim_feedforward, dropout: feed-forward width and dropout of every residual branch.
    """

    def __init__(
        self, cross_attn: MultiScaleDeformableAttention, dim_feedforward: int = 1024, dropout: float = 0.1
    ) -> None:
        super().__init__()
        d_model, num_heads = cross_attn.embed_dim, cross_attn.num_heads
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = cross_attn
        self.cross_attn_dropout = nn.Dropout(dropout)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.ffn = ResidualFeedForward(d_model, dim_feedforward, dropout)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        memory_padding_mask: Tensor,
    ) -> Tensor:
        """tgt, query_pos [B, Q, D]; reference_points [B, Q, L, 2|4]; memory [B, S, D] -> [B, Q, D]."""
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.self_attn_norm(tgt + self.self_attn_dropout(attended))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, memory_padding_mask
        )
        tgt = self.cross_attn_norm(tgt + self.cross_attn_dropout(attended))
        return self.ffn(tgt)


class DeformableDecoder(nn.Module):
    """A stack of ``num_layers`` decoder layers with optional iterative box refinement."""

    def __init__(self, layer: DeformableDecoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        valid_ratios: Tensor,
        memory_padding_mask: Tensor,
        box_heads: Sequence[nn.Module] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Decode the queries layer by layer.

        Args:
            tgt, query_pos: [B, Q, D] query content and position.
            reference_points: [B, Q, 2] normalized (x, y) points or [B, Q, 4] cxcywh boxes (sigmoid space).
            memory: [B, S, D] encoder output; memory_padding_mask bool [B, S].
            spatial_shapes, valid_ratios: level shapes and [B, L, 2] valid fractions.
            box_heads: per-layer box regressors for iterative refinement; after layer ``l`` the
                reference becomes ``sigmoid(box_heads[l](h) + inverse_sigmoid(reference))``, detached so
                each layer's box loss only trains that layer. ``None``: references stay fixed.

        Returns:
            hidden states [num_layers, B, Q, D] and the list of references each layer started from,
            each [B, Q, 2|4] (with refinement, 2-d points become boxes after the first layer).
        """
        if box_heads is not None and len(box_heads) < len(self.layers):
            raise ValueError(
                f"box refinement needs one box head per decoder layer ({len(self.layers)}), got {len(box_heads)}"
            )
        hidden, references = [], []
        for lid, layer in enumerate(self.layers):
            references.append(reference_points)
            # The reference is relative to the valid image; sampling happens in the padded map.
            scale = (
                valid_ratios
                if reference_points.shape[-1] == 2
                else torch.cat((valid_ratios, valid_ratios), -1)
            )
            tgt = layer(
                tgt,
                query_pos,
                reference_points[:, :, None] * scale[:, None],
                memory,
                spatial_shapes,
                memory_padding_mask,
            )
            hidden.append(tgt)
            if box_heads is not None:
                refined = refine_boxes(box_heads[lid](tgt), reference_points)
                reference_points = refined.sigmoid().detach()
        return torch.stack(hidden), references
