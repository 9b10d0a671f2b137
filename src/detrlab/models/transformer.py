"""DETR's encoder-decoder transformer over flattened image features and learned object queries."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from detrlab.models.initialization import xavier_uniform_weight_matrices
from detrlab.models.transformer_layers import TransformerDecoderLayer, TransformerEncoderLayer


class TransformerEncoder(nn.Module):
    """A stack of encoder layers, with an optional final LayerNorm (used by pre-norm models)."""

    def __init__(self, layers: list[TransformerEncoderLayer], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:
        """[B, N, d] features, [B, N, d] positions, bool [B, N] padding -> memory [B, N, d]."""
        for layer in self.layers:
            src = layer(src, pos=pos, key_padding_mask=key_padding_mask)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    """A stack of decoder layers returning every layer's output, each passed through a shared final norm.

    The per-layer outputs feed the auxiliary losses; sharing the norm keeps them on the same scale as
    the last layer's, so one set of prediction heads serves all of them.
    """

    def __init__(self, layers: list[TransformerDecoderLayer], norm: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(
        self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, memory_key_padding_mask: Tensor
    ) -> Tensor:
        """Decode.

        Args:
            tgt: [B, Q, d] initial query content.
            memory: [B, N, d] encoder output; pos: [B, N, d] its positional embedding.
            query_pos: [B, Q, d] query embedding.
            memory_key_padding_mask: bool [B, N], True on padding.

        Returns:
            [L, B, Q, d] normalized output of every layer.
        """
        outputs = []
        for layer in self.layers:
            tgt = layer(
                tgt, memory, pos=pos, query_pos=query_pos, memory_key_padding_mask=memory_key_padding_mask
            )
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    """Encoder-decoder transformer of DETR.

    Args:
        d_model: feature width.
        nhead: attention heads.
        num_encoder_layers: encoder depth (0 allowed: the memory is then the input features).
        num_decoder_layers: decoder depth (at least 1).
        normalize_before: pre-norm layers (and a final encoder LayerNorm) instead of post-norm.
        **layer_options: the other arguments of every layer (:class:`~detrlab.models.transformer_layers.ResidualLayer`):
            ``dim_feedforward`` (2048, hidden width of the feed-forward blocks), ``dropout`` (0.1, in
            attention and feed-forward blocks) and ``activation`` ("relu" or "gelu").
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        normalize_before: bool = False,
        **layer_options: Any,
    ) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        if num_decoder_layers < 1 or num_encoder_layers < 0:
            raise ValueError(
                f"need num_decoder_layers >= 1 and num_encoder_layers >= 0, got "
                f"{num_decoder_layers} and {num_encoder_layers}"
            )
        layer_args = {
            "d_model": d_model,
            "nhead": nhead,
            "normalize_before": normalize_before,
            **layer_options,
        }
        self.encoder = TransformerEncoder(
            [TransformerEncoderLayer(**layer_args) for _ in range(num_encoder_layers)],
            # Pre-norm layers leave their output un-normalized, so the stack needs a closing norm.
            norm=nn.LayerNorm(d_model) if normalize_before else None,
        )
        self.decoder = TransformerDecoder(
            [TransformerDecoderLayer(**layer_args) for _ in range(num_decoder_layers)],
            norm=nn.LayerNorm(d_model),
        )
        self.d_model = d_model
        self.nhead = nhead
        xavier_uniform_weight_matrices(self)

    def forward(
        self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Run encoder and decoder.

        Args:
            src: [B, d, H, W] projected backbone features.
            mask: bool [B, H, W], True on padding.
            query_embed: [Q, d] learned object queries (used as query positions; content starts at 0).
            pos_embed: [B, d, H, W] positional encoding of ``src``.

        Returns:
            ``(hs, memory)``: decoder outputs of all layers [L, B, Q, d] and encoder memory [B, H*W, d].
        """
        b = src.shape[0]
        src = src.flatten(2).transpose(1, 2)
        pos = pos_embed.flatten(2).transpose(1, 2)
        key_padding_mask = mask.flatten(1)
        query_pos = query_embed[None].expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)

        memory = self.encoder(src, pos=pos, key_padding_mask=key_padding_mask)
        hs = self.decoder(tgt, memory, pos=pos, query_pos=query_pos, memory_key_padding_mask=key_padding_mask)
        return hs, memory
