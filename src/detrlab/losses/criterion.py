"""Set-prediction loss of DETR: match queries to targets, then score classes and boxes of the matches."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from detrlab.utils.boxes import cxcywh_to_xyxy
from detrlab.utils.dist import average_across_ranks

__all__ = ["DEFAULT_LOSS_WEIGHTS", "SetCriterion"]

#: Weight of each loss term in ``loss`` unless overridden (keys of ``SetCriterion(loss_weights=...)``).
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"ce": 1.0, "bbox": 5.0, "giou": 2.0}

Indices = list[tuple[Tensor, Tensor]]


class SetCriterion(nn.Module):
    """DETR's loss: Hungarian matching, then softmax cross entropy, L1 and GIoU on the matched pairs.

    ``outputs`` (from the detector):
        ``pred_logits`` ``[B, Q, C + 1]`` (last column = "no object"), ``pred_boxes`` ``[B, Q, 4]``
        (normalized cxcywh) and optionally ``aux_outputs``: a list of dicts with the same two keys,
        one per intermediate decoder layer.
    ``targets``:
        ``B`` dicts with ``labels`` int64 ``[N_b]`` in ``0..C-1`` and ``boxes`` ``[N_b, 4]``
        (normalized cxcywh).

    Returned dict (all 0-dim tensors):
        ``loss_ce``: cross entropy over all ``B * Q`` queries; unmatched queries target class ``C``
            ("no object"), whose class weight is ``eos_coef``; normalized by the sum of the weights.
        ``loss_bbox``: L1 between matched predicted and target boxes, summed / ``num_boxes``.
        ``loss_giou``: ``1 - GIoU`` of the matched pairs, summed / ``num_boxes``.
        ``cardinality_error``: mean over images of ``|#queries not predicting "no object" - N_b|``
            (logging only, no gradient, not part of ``loss``).
        ``class_error``: ``100 - top-1 accuracy (%)`` of the matched queries; 0 when the batch has no
            targets (logging only, no gradient, not part of ``loss``).
        ``loss_ce_{i}``, ``loss_bbox_{i}``, ``loss_giou_{i}``, ``cardinality_error_{i}``,
        ``class_error_{i}``: the same for ``aux_outputs[i]``, each with its own matching.
        ``loss``: ``sum(weight * term)`` over ``loss_ce``, ``loss_bbox``, ``loss_giou`` and their aux
            copies (an aux copy has the weight of its final-layer term).

    ``num_boxes`` is the number of target boxes in the batch averaged over ranks and clamped at 1,
    so that every rank normalizes by the same amount and an empty batch does not divide by zero.

    Subclasses change the classification term by overriding :meth:`class_loss` (and
    :meth:`count_predicted_objects` when "no object" is not a logit column), e.g. a sigmoid focal
    loss; matching, box losses, aux handling and weighting stay as they are.

    Args:
        num_classes: ``C``, the number of object classes (without "no object").
        matcher: Module mapping ``(outputs, targets)`` to per-image ``(query_idx, target_idx)`` pairs,
            e.g. :class:`detrlab.losses.matcher.HungarianMatcher`.
        loss_weights: Weights of the terms in ``loss``, keys ``"ce"``, ``"bbox"``, ``"giou"``; missing
            keys keep their defaults (1, 5, 2).
        eos_coef: Class weight of "no object" in the cross entropy (the object classes have 1);
            keeps the many unmatched queries from dominating the loss.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        loss_weights: Mapping[str, float] | None = None,
        eos_coef: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"SetCriterion: num_classes must be >= 1, got {num_classes}")
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        if loss_weights is not None:
            unknown = set(loss_weights) - set(DEFAULT_LOSS_WEIGHTS)
            if unknown:
                raise ValueError(
                    f"SetCriterion: unknown loss_weights keys {sorted(unknown)}; "
                    f"valid keys are {sorted(DEFAULT_LOSS_WEIGHTS)}"
                )
            weights.update({key: float(value) for key, value in loss_weights.items()})
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = float(eos_coef)
        #: Weight of each final-layer term in ``loss`` (aux copies reuse these).
        self.weight_dict: dict[str, float] = {f"loss_{key}": value for key, value in weights.items()}
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, weight_dict={self.weight_dict}"

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Compute all terms and their weighted sum; see the class docstring for the keys."""
        device = outputs["pred_logits"].device
        num_boxes = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        num_boxes = average_across_ranks(num_boxes).clamp(min=1.0)

        layers = [("", outputs)]
        layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs") or [])]

        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        for suffix, layer_outputs in layers:
            terms = self.layer_losses(layer_outputs, targets, num_boxes)
            for name, weight in self.weight_dict.items():
                total = total + weight * terms[name]
            losses.update({name + suffix: value for name, value in terms.items()})
        losses["loss"] = total
        return losses

    def layer_losses(
        self, outputs: dict[str, Tensor], targets: list[dict], num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Match one decoder layer's predictions and compute its unsuffixed terms."""
        indices = self.matcher(outputs, targets)
        terms = self.class_loss(outputs, targets, indices)
        terms.update(self.box_losses(outputs, targets, indices, num_boxes))
        terms.update(self.diagnostics(outputs, targets, indices))
        return terms

    def class_loss(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: Indices
    ) -> dict[str, Tensor]:
        """``loss_ce``: weighted softmax cross entropy, "no object" for every unmatched query."""
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: pred_logits has {logits.shape[-1]} classes in its last dim but "
                f"num_classes={self.num_classes} needs {self.num_classes + 1} (with 'no object'); "
                "make the criterion's num_classes match the detector's"
            )
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        batch_idx, query_idx = matched_query_index(indices, logits.device)
        target_classes[batch_idx, query_idx] = matched_target_values(
            targets, indices, "labels", logits.device
        )
        # cross_entropy wants the class dim second: [B, C+1, Q]
        loss_ce = F.cross_entropy(
            logits.transpose(1, 2), target_classes, weight=self.empty_weight.to(logits.dtype)
        )
        return {"loss_ce": loss_ce}

    def box_losses(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: Indices, num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """``loss_bbox`` (L1 on cxcywh) and ``loss_giou`` (1 - GIoU) of the matched pairs."""
        pred_boxes = outputs["pred_boxes"]
        batch_idx, query_idx = matched_query_index(indices, pred_boxes.device)
        matched = upcast_to_float32(pred_boxes[batch_idx, query_idx])
        target = matched_target_values(targets, indices, "boxes", pred_boxes.device).to(matched.dtype)
        loss_bbox = F.l1_loss(matched, target, reduction="none").sum() / num_boxes
        # The pairs are aligned, so only the diagonal of the pairwise GIoU matrix is needed.
        giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(target)))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def count_predicted_objects(self, logits: Tensor) -> Tensor:
        """``[B]`` number of queries per image whose best class is not "no object" (the last column)."""
        return (logits.argmax(-1) != logits.shape[-1] - 1).sum(dim=1)

    @torch.no_grad()
    def diagnostics(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: Indices
    ) -> dict[str, Tensor]:
        """``cardinality_error`` and ``class_error`` (logging only, no gradient)."""
        logits = outputs["pred_logits"]
        num_targets = torch.tensor([len(t["labels"]) for t in targets], device=logits.device)
        predicted = self.count_predicted_objects(logits)
        cardinality_error = (predicted.float() - num_targets.float()).abs().mean()

        batch_idx, query_idx = matched_query_index(indices, logits.device)
        matched_labels = matched_target_values(targets, indices, "labels", logits.device)
        if matched_labels.numel() == 0:
            class_error = torch.zeros((), device=logits.device)
        else:
            correct = logits[batch_idx, query_idx].argmax(-1) == matched_labels
            class_error = 100.0 - 100.0 * correct.float().mean()
        return {"cardinality_error": cardinality_error, "class_error": class_error}


def upcast_to_float32(tensor: Tensor) -> Tensor:
    """Half/bfloat16 to float32 (GIoU's area products lose too much precision in 16 bits)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def matched_query_index(indices: Indices, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(batch_idx, query_idx)`` of all matched queries, for indexing ``[B, Q, ...]`` tensors."""
    batch_idx = torch.cat([torch.full_like(query, b) for b, (query, _) in enumerate(indices)])
    query_idx = torch.cat([query for query, _ in indices])
    return batch_idx.to(device), query_idx.to(device)


def matched_target_values(targets: list[dict], indices: Indices, key: str, device: torch.device) -> Tensor:
    """``targets[b][key]`` of each matched target, in the order of :func:`matched_query_index`."""
    return torch.cat([t[key][target.to(t[key].device)] for t, (_, target) in zip(targets, indices)]).to(
        device
    )
