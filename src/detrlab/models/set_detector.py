"""What every detector of the family shares: the backbone, the set sizes and the per-layer output dict."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detrlab.errors import ConfigError

__all__ = ["SetDetector", "check_detector_sizes"]


def check_detector_sizes(num_classes: int, num_queries: int, hidden_dim: int) -> None:
    """Raise :class:`~detrlab.errors.ConfigError` for sizes no detector can be built with."""
    if num_classes < 1 or num_queries < 1:
        raise ConfigError(
            f"num_classes and num_queries must be >= 1, got {num_classes} and {num_queries}: set "
            "model.num_classes (or data.num_classes) and model.num_queries to positive values"
        )
    if hidden_dim % 2:
        raise ConfigError(
            f"hidden_dim must be even (sine positions give half of it to y, half to x), got {hidden_dim}: "
            "set model.detector.hidden_dim to an even width"
        )


class SetDetector(nn.Module):
    """Base of the detectors that predict a set of ``num_queries`` (class, box) pairs per image.

    It checks the sizes every detector needs and keeps them as the attributes the rest of the code
    reads (``num_classes`` for the criterion and post-processing, ``num_queries``, ``hidden_dim``).
    Subclasses build the position encoding, the transformer and the heads; their
    ``forward(images, mask)`` takes ``images`` float [B, 3, H, W] (normalized, zero-padded) and
    ``mask`` bool [B, H, W] (True on padding) and returns :meth:`decoder_predictions`.

    Args:
        backbone: module with ``forward(images, mask) -> list[(features, mask)]`` and a
            ``num_channels`` list. Kept as ``self.backbone`` so that optimizers can give parameters
            prefixed ``backbone.`` their own learning rate.
        num_classes: object classes C (>= 1).
        num_queries: object queries, the most detections per image (>= 1).
        hidden_dim: transformer width; even, because sine positions give half of it to y, half to x.
        aux_loss: also return the predictions of the earlier decoder layers (``aux_outputs``).
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, num_queries: int, hidden_dim: int, aux_loss: bool
    ) -> None:
        super().__init__()
        check_detector_sizes(num_classes, num_queries, hidden_dim)
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.aux_loss = aux_loss

    def decoder_predictions(self, logits: Sequence[Tensor], boxes: Sequence[Tensor]) -> dict:
        """The detector output of ``L`` decoder layers' ``[B, Q, K]`` logits and ``[B, Q, 4]`` boxes.

        Returns:
            ``pred_logits`` / ``pred_boxes`` of the last layer and ``aux_outputs``: those of layers
            ``0..L-2`` as a list of dicts (empty unless ``aux_loss``).
        """
        aux = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": aux if self.aux_loss else [],
        }
