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


class FeedForwardMLP(nn.Module):
    """Position-wise MLP ``d -> dim_feedforward -> d`` with dropout after the activation; no residual or
    norm (the layer adds those, pre- or post-norm)."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.activation = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, d] -> [B, N, d]."""
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class ResidualLayer(nn.Module):
    """Attention blocks and a feed-forward block, each residual with dropout and a LayerNorm.

    Post-norm (``x = norm(x + dropout(f(x)))``) by default, pre-norm
    (``x = x + dropout(f(norm(x)))``) with ``normalize_before``. Block ``i`` (1-based) owns
    ``norm{i}`` and ``dropout{i}``: self-attention, then the cross-attention of subclasses with
    ``with_cross_attention``, then the feed-forward block.

    Args:
        d_model, nhead: width and heads of every attention.
        dim_feedforward, dropout, activation: the feed-forward block and the dropout of every block.
        normalize_before: pre-norm instead of post-norm.
    """

    #: Whether the layer also attends to a memory (``cross_attn``, a third residual block).
    with_cross_attention = False

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
        if self.with_cross_attention:
            self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        num_blocks = 3 if self.with_cross_attention else 2
        self.ffn = FeedForwardMLP(d_model, dim_feedforward, dropout, activation)
        for i in range(1, num_blocks + 1):
            self.add_module(f"norm{i}", nn.LayerNorm(d_model))
        for i in range(1, num_blocks + 1):
            self.add_module(f"dropout{i}", nn.Dropout(dropout))
        self.normalize_before = normalize_before

    def residual(self, block: int, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """``x`` [B, N, d] updated by ``sublayer`` as residual block ``block`` (its norm and dropout)."""
        norm, dropout = getattr(self, f"norm{block}"), getattr(self, f"dropout{block}")
        if self.normalize_before:
            return x + dropout(sublayer(norm(x)))
        return norm(x + dropout(sublayer(x)))


class TransformerEncoderLayer(ResidualLayer):
    """Self-attention + feed-forward block, post-norm by default (``normalize_before`` for pre-norm)."""

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

        def self_attention(x: Tensor) -> Tensor:
            q = k = with_pos(x, pos)
            return self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

        src = self.residual(1, src, self_attention)
        return self.residual(2, src, self.ffn)


class TransformerDecoderLayer(ResidualLayer):
    """Query self-attention, cross-attention to the encoder memory, then feed-forward."""

    with_cross_attention = True

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

        def self_attention(x: Tensor) -> Tensor:
            q = k = with_pos(x, query_pos)
            return self.self_attn(q, k, x, need_weights=False)[0]

        def cross_attention(x: Tensor) -> Tensor:
            return self.cross_attn(
                with_pos(x, query_pos),
                with_pos(memory, pos),
                memory,
                key_padding_mask=memory_key_padding_mask,
                need_weights=False,
            )[0]

        tgt = self.residual(1, tgt, self_attention)
        tgt = self.residual(2, tgt, cross_attention)
        return self.residual(3, tgt, self.ffn)
