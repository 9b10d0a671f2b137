"""Encoder and decoder layers of the DETR transformer.

Unlike ``torch.nn.TransformerEncoderLayer``, positional embeddings are added to the queries and keys of
every attention (never to the values), which DETR needs because its inputs carry no position otherwise.
All tensors are batch-first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    """Return the activation function called ``name`` ("relu" or "gelu")."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    """Add a positional embedding when there is one."""
    return x if pos is None else x + pos


class FeedForward(nn.Module):
    """Position-wise MLP ``d -> dim_feedforward -> d`` with dropout after the activation."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.activation = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, d] -> [B, N, d]."""
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward block, post-norm by default (``normalize_before`` for pre-norm)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(
        self, src: Tensor, pos: Tensor | None = None, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """Encode ``src``.

        Args:
            src: [B, N, d] flattened image features.
            pos: [B, N, d] positional embedding, added to queries and keys.
            key_padding_mask: bool [B, N], True on padding (ignored as keys).

        Returns:
            [B, N, d].
        """
        x = self.norm1(src) if self.normalize_before else src
        q = k = with_pos(x, pos)
        attn = self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = src + self.dropout1(attn)
        if not self.normalize_before:
            src = self.norm1(src)

        x = self.norm2(src) if self.normalize_before else src
        src = src + self.dropout2(self.ffn(x))
        if not self.normalize_before:
            src = self.norm2(src)
        return src


class TransformerDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, then feed-forward."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Update the object queries.

        Args:
            tgt: [B, Q, d] query content.
            memory: [B, N, d] encoder output.
            pos: [B, N, d] positional embedding of the memory, added to the cross-attention keys.
            query_pos: [B, Q, d] learned query embedding, added to every attention query (and to the
                self-attention keys).
            memory_key_padding_mask: bool [B, N], True on padded memory cells.

        Returns:
            [B, Q, d].
        """
        pre = self.normalize_before

        x = self.norm1(tgt) if pre else tgt
        q = k = with_pos(x, query_pos)
        tgt = tgt + self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])
        if not pre:
            tgt = self.norm1(tgt)

        x = self.norm2(tgt) if pre else tgt
        attn = self.cross_attn(
            with_pos(x, query_pos),
            with_pos(memory, pos),
            memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout2(attn)
        if not pre:
            tgt = self.norm2(tgt)

        x = self.norm3(tgt) if pre else tgt
        tgt = tgt + self.dropout3(self.ffn(x))
        if not pre:
            tgt = self.norm3(tgt)
        return tgt
