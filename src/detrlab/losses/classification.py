"""Classification terms of the set criterion: softmax cross entropy with a "no object" class, sigmoid focal.

Each part scores a whole ``[B, Q, K]`` logit tensor against the classes of its assigned targets
(every unassigned query is background), says how many logit columns it expects, and counts the
queries that predict an object (for ``cardinality_error``). The part owns the class count because
its logit layout depends on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from detrlab.losses.matched import upcast_to_float32

__all__ = ["SigmoidFocalLoss", "SoftmaxCrossEntropy"]


def _check_num_classes(owner: str, num_classes: int) -> int:
    if int(num_classes) < 1:
        raise ValueError(f"{owner}: num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


class SoftmaxCrossEntropy(nn.Module):
    """DETR's class term: cross entropy over ``C + 1`` softmax logits, the last one "no object".

    Unassigned queries target "no object", whose class weight is ``eos_coef`` (the object classes
    have 1), so the many background queries do not dominate; the mean is taken over the weights.

    Args:
        num_classes: ``C``, the object classes (without "no object").
        eos_coef: Class weight of "no object".
    """

    #: Weight of ``loss_ce`` in the criterion's sum unless ``loss_weights`` says otherwise.
    default_weight = 1.0

    def __init__(self, num_classes: int, eos_coef: float = 0.1) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(type(self).__name__, num_classes)
        self.eos_coef = float(eos_coef)
        empty_weight = torch.ones(self.num_classes + 1)
        empty_weight[-1] = self.eos_coef
        # A buffer, so that it follows the module to the training device.
        self.register_buffer("empty_weight", empty_weight)

    @property
    def num_logits(self) -> int:
        """Logit columns the detector must produce: the classes and "no object"."""
        return self.num_classes + 1

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, eos_coef={self.eos_coef}"

    def forward(
        self, logits: Tensor, batch_idx: Tensor, query_idx: Tensor, labels: Tensor, num_boxes: Tensor
    ) -> Tensor:
        """0-dim weighted cross entropy over all ``B * Q`` queries.

        Args:
            logits: ``[B, Q, C + 1]``.
            batch_idx, query_idx, labels: ``[P]`` int64 each: the assigned queries and their classes.
            num_boxes: 0-dim box normaliser (unused: the weighted mean normalises this term).
        """
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[batch_idx, query_idx] = labels
        # cross_entropy wants the class dim second: [B, C+1, Q]
        return F.cross_entropy(
            logits.transpose(1, 2), target_classes, weight=self.empty_weight.to(logits.dtype)
        )

    def count_predicted_objects(self, logits: Tensor) -> Tensor:
        """``[B]`` queries per image whose best class is not "no object" (the last column)."""
        return (logits.argmax(-1) != logits.shape[-1] - 1).sum(dim=1)


class SigmoidFocalLoss(nn.Module):
    """Deformable DETR's class term: sigmoid focal loss over ``C`` logits (no "no object" column).

    Summed over all ``B * Q * C`` entries and divided by the box normaliser, like the box terms.
    The target is multi-hot: with one-to-many assignment a query matched to two targets is pushed
    towards both classes, whatever the order of the pairs.

    Args:
        num_classes: ``C``.
        alpha: Weight of positives (negatives get ``1 - alpha``).
        gamma: Focusing exponent.
    """

    default_weight = 2.0

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(type(self).__name__, num_classes)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    @property
    def num_logits(self) -> int:
        """Logit columns the detector must produce: one per class."""
        return self.num_classes

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, gamma={self.gamma}"

    def forward(
        self, logits: Tensor, batch_idx: Tensor, query_idx: Tensor, labels: Tensor, num_boxes: Tensor
    ) -> Tensor:
        """0-dim focal loss ``sum / num_boxes``; arguments as :meth:`SoftmaxCrossEntropy.forward`."""
        logits = upcast_to_float32(logits)
        target = torch.zeros_like(logits)
        target[batch_idx, query_idx, labels] = 1.0
        loss = sigmoid_focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, reduction="sum")
        return loss / num_boxes

    def count_predicted_objects(self, logits: Tensor) -> Tensor:
        """``[B]`` queries per image whose most likely class has probability > 0.5."""
        return (logits.amax(dim=-1) > 0).sum(dim=1)
