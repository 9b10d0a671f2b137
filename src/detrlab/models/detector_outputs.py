"""What every detector of the family checks at construction and returns per decoder layer."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["check_detector_sizes", "decoder_predictions"]


def check_detector_sizes(num_classes: int, num_queries: int, hidden_dim: int) -> None:
    """Raise ``ValueError`` for sizes no detector can be built with (sine positions need an even width)."""
    if num_classes < 1 or num_queries < 1:
        raise ValueError(f"num_classes and num_queries must be >= 1, got {num_classes} and {num_queries}")
    if hidden_dim % 2:
        raise ValueError(f"hidden_dim must be even (half of it encodes y, half x), got {hidden_dim}")


def decoder_predictions(logits: Sequence[Tensor], boxes: Sequence[Tensor], aux_loss: bool) -> dict:
    """The detector output of ``L`` decoder layers' ``[B, Q, K]`` logits and ``[B, Q, 4]`` boxes.

    Returns:
        ``pred_logits`` / ``pred_boxes`` of the last layer and ``aux_outputs``: those of layers
        ``0..L-2`` as a list of dicts (empty unless ``aux_loss``).
    """
    aux = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
    return {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "aux_outputs": aux if aux_loss else []}
