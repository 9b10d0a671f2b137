"""The set criterion of every detector: assign predictions to targets, then score classes and boxes.

One class for the whole family, composed of two parts chosen in the config:

- an assignment strategy (:mod:`detrlab.losses.assignment`): Hungarian matching, or DETA's
  stage-1 / stage-2 IoU assignment;
- a classification loss (:mod:`detrlab.losses.classification`): softmax cross entropy with a
  "no object" class (DETR) or sigmoid focal loss (Deformable DETR, DETA).

The box terms (L1 and GIoU), the loop over the supervised outputs, the weighting and the box
normaliser are the same for all and written here once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from detrlab.losses.matched import Indices, matched_query_index, matched_target_values, upcast_to_float32
from detrlab.utils.boxes import cxcywh_to_xyxy
from detrlab.utils.dist import average_across_ranks
from detrlab.utils.host_sync import values_are_free

__all__ = ["LOSS_TERMS", "SetCriterion"]

#: The weighted terms of every supervised output and their default weights; ``ce``'s default is
#: the classification part's ``default_weight`` (softmax 1, focal 2).
LOSS_TERMS: dict[str, float | None] = {"ce": None, "bbox": 5.0, "giou": 2.0}


class SetCriterion(nn.Module):
    """Set-prediction loss: assignment, classification and box terms of every supervised output.

    ``outputs`` (from the detector):
        ``pred_logits`` ``[B, Q, K]`` (``K = C + 1`` for softmax, ``C`` for focal), ``pred_boxes``
        ``[B, Q, 4]`` (normalized cxcywh), ``aux_outputs``: a list of such dicts for the earlier
        decoder layers. Two-stage detectors add ``enc_outputs`` (``pred_logits`` ``[B, S, K]``,
        ``pred_boxes`` ``[B, S, 4]``, ``anchors`` ``[B, S, 4]``, optional ``valid`` bool ``[B, S]``)
        and ``init_reference`` ``[B, Q, 4]`` (the decoder's input boxes).
    ``targets``:
        ``B`` dicts with ``labels`` int64 ``[N_b]`` in ``0..C-1`` and ``boxes`` ``[N_b, 4]``
        (normalized cxcywh).

    Returned dict (0-dim tensors), for the final layer unsuffixed, ``_{i}`` for ``aux_outputs[i]``
    and ``_enc`` for ``enc_outputs`` (class-agnostic: every target there has label 0):
        ``loss_ce``: the classification part's term.
        ``loss_bbox``: L1 of assigned predicted and target boxes, summed / ``num_boxes``.
        ``loss_giou``: ``1 - GIoU`` of the assigned pairs, summed / ``num_boxes``.
        ``cardinality_error``: mean over images of ``|#queries predicting an object - N_b|``.
        ``class_error``: ``100 -`` top-1 accuracy (%) of the assigned queries; 0 without targets.
        (the last two for logging only: no gradient, not in ``loss``)
        ``loss``: ``sum(weight * term)`` over ``loss_ce``, ``loss_bbox``, ``loss_giou`` of every output
        (a copy has the weight of its final-layer term).

    ``num_boxes`` is the batch's number of target boxes averaged over ranks and clamped at 1, for
    every term and every output (also for one-to-many assignment, which has more pairs than
    boxes), so every rank normalises by the same amount and an empty batch does not divide by 0.

    Args:
        classification: :class:`~detrlab.losses.classification.SoftmaxCrossEntropy` or
            :class:`~detrlab.losses.classification.SigmoidFocalLoss`; its ``num_classes`` is the
            criterion's.
        assignment: :class:`~detrlab.losses.assignment.HungarianAssignment` or
            :class:`~detrlab.losses.assignment.DetaAssignment`.
        loss_weights: Weights of ``ce``, ``bbox``, ``giou``; missing keys keep their defaults
            (the classification part's, 5, 2).
    """

    def __init__(
        self,
        classification: nn.Module,
        assignment: nn.Module,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        unknown = set(loss_weights or {}) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(
                f"SetCriterion: unknown loss_weights keys {sorted(unknown)}; valid keys are {sorted(LOSS_TERMS)}"
            )
        weights = {**LOSS_TERMS, "ce": classification.default_weight, **(loss_weights or {})}
        self.classification = classification
        self.assignment = assignment
        #: Weight of each final-layer term in ``loss`` (the copies reuse these).
        self.weight_dict: dict[str, float] = {f"loss_{key}": float(value) for key, value in weights.items()}

    @property
    def num_classes(self) -> int:
        """``C``, the object classes (the classification part's)."""
        return self.classification.num_classes

    def extra_repr(self) -> str:
        return f"weight_dict={self.weight_dict}"

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Compute all terms and their weighted sum; see the class docstring for the keys."""
        self.check_inputs(outputs, targets)
        device = outputs["pred_logits"].device
        num_boxes = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        num_boxes = average_across_ranks(num_boxes).clamp(min=1.0)

        decoder_layers = [outputs, *(outputs.get("aux_outputs") or [])]
        suffixes = ["", *(f"_{i}" for i in range(len(decoder_layers) - 1))]
        supervised = [
            (suffix, layer, targets, indices)
            for suffix, layer, indices in zip(
                suffixes, decoder_layers, self.assignment.decoder_indices(outputs, targets)
            )
        ]
        if outputs.get("enc_outputs") is not None:
            # Class-agnostic proposals: every target is "object" (label 0).
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            enc_outputs = outputs["enc_outputs"]
            supervised.append(
                ("_enc", enc_outputs, agnostic, self.assignment.encoder_indices(enc_outputs, agnostic))
            )

        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        for suffix, layer_outputs, layer_targets, indices in supervised:
            terms = self.matched_losses(layer_outputs, layer_targets, indices, num_boxes)
            for name, weight in self.weight_dict.items():
                total = total + weight * terms[name]
            losses.update({name + suffix: value for name, value in terms.items()})
        losses["loss"] = total
        return losses

    def check_inputs(self, outputs: dict, targets: list[dict[str, Tensor]]) -> None:
        """Raise ``ValueError`` naming the mismatch when logits, targets and ``num_classes`` disagree."""
        logits = outputs["pred_logits"]
        expected = self.classification.num_logits
        if logits.shape[-1] != expected:
            raise ValueError(
                f"SetCriterion: pred_logits has {logits.shape[-1]} classes in its last dim but "
                f"{type(self.classification).__name__} with num_classes={self.num_classes} needs {expected}; "
                "make the criterion's num_classes match the detector's (and softmax logits carry an "
                "extra 'no object' column, sigmoid logits do not)"
            )
        if len(targets) != logits.shape[0]:
            raise ValueError(
                f"SetCriterion: got {len(targets)} target dicts for a batch of {logits.shape[0]} images; "
                "pass exactly one target dict per image"
            )
        labels = torch.cat([t["labels"].reshape(-1) for t in targets])
        # Reading the labels' values blocks the host on an accelerator: checked only where it is free.
        out_of_range = (labels < 0) | (labels >= self.num_classes)
        if labels.numel() and values_are_free(labels) and bool(out_of_range.any()):
            raise ValueError(
                f"SetCriterion: target labels span [{int(labels.min())}, {int(labels.max())}] but must be "
                f"contiguous class indices in 0..{self.num_classes - 1}; map the dataset's category ids "
                "to contiguous labels (or fix num_classes)"
            )

    def matched_losses(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: Indices, num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Unsuffixed terms of one supervised output for the given pairs."""
        terms = self.class_loss(outputs, targets, indices, num_boxes)
        terms.update(self.box_losses(outputs, targets, indices, num_boxes))
        terms.update(self.diagnostics(outputs, targets, indices))
        return terms

    def class_loss(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: Indices, num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """``loss_ce`` of one output: the classification part on all its queries."""
        logits = outputs["pred_logits"]
        batch_idx, query_idx = matched_query_index(indices, logits.device)
        labels = matched_target_values(targets, indices, "labels", logits.device)
        return {"loss_ce": self.classification(logits, batch_idx, query_idx, labels, num_boxes)}

    def box_losses(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: Indices, num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """``loss_bbox`` (L1 on cxcywh) and ``loss_giou`` (1 - GIoU) of the assigned pairs."""
        pred_boxes = outputs["pred_boxes"]
        batch_idx, query_idx = matched_query_index(indices, pred_boxes.device)
        matched = upcast_to_float32(pred_boxes[batch_idx, query_idx])
        target = matched_target_values(targets, indices, "boxes", pred_boxes.device).to(matched.dtype)
        loss_bbox = F.l1_loss(matched, target, reduction="none").sum() / num_boxes
        # The pairs are aligned, so only the diagonal of the pairwise GIoU matrix is needed.
        giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(target)))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    @torch.no_grad()
    def diagnostics(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: Indices
    ) -> dict[str, Tensor]:
        """``cardinality_error`` and ``class_error`` (logging only, no gradient)."""
        logits = outputs["pred_logits"]
        num_targets = torch.tensor([len(t["labels"]) for t in targets], device=logits.device)
        predicted = self.classification.count_predicted_objects(logits)
        cardinality_error = (predicted.float() - num_targets.float()).abs().mean()

        batch_idx, query_idx = matched_query_index(indices, logits.device)
        matched_labels = matched_target_values(targets, indices, "labels", logits.device)
        if matched_labels.numel() == 0:
            class_error = torch.zeros((), device=logits.device)
        else:
            correct = logits[batch_idx, query_idx].argmax(-1) == matched_labels
            class_error = 100.0 - 100.0 * correct.float().mean()
        return {"cardinality_error": cardinality_error, "class_error": class_error}
