"""Set loss of the deformable family (Deformable DETR, DETA): sigmoid focal classification, L1 and GIoU boxes.

Decoder layers are matched one-to-one (Hungarian) or, with ``assign_second_stage``, one-to-many by
IoU of the decoder's input proposals; the two-stage encoder output is scored class-agnostically,
matched by Hungarian or, with ``assign_first_stage``, by IoU of its anchors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from detrlab.losses.assigner import Stage1Assigner, Stage2Assigner
from detrlab.losses.criterion import (
    SetCriterion,
    matched_query_index,
    matched_target_values,
    upcast_to_float32,
)
from detrlab.utils.dist import average_across_ranks

__all__ = ["DEFORMABLE_LOSS_WEIGHTS", "DeformableSetCriterion"]

#: Deformable DETR's weights; DETA's configs lower ``ce`` to 1.
DEFORMABLE_LOSS_WEIGHTS: dict[str, float] = {"ce": 2.0, "bbox": 5.0, "giou": 2.0}

Indices = list[tuple[Tensor, Tensor]]


class DeformableSetCriterion(SetCriterion):
    """Focal-loss set criterion with optional DETA IoU assignment for the encoder and decoder.

    ``outputs`` (from the detector):
        ``pred_logits`` ``[B, Q, C]`` sigmoid logits (no "no object" column), ``pred_boxes``
        ``[B, Q, 4]`` normalized cxcywh, ``aux_outputs``: list of such dicts for decoder layers
        ``0..L-2``. Two-stage models add ``enc_outputs``: dict with ``pred_logits`` ``[B, S, C_enc]``,
        ``pred_boxes`` ``[B, S, 4]``, ``anchors`` ``[B, S, 4]`` (unrefined proposals, normalized
        cxcywh) and optionally ``valid`` bool ``[B, S]`` (False for padding / invalid proposals,
        which are then never positive); and ``init_reference`` ``[B, Q, 4]`` (the decoder's input
        proposal boxes, needed by ``assign_second_stage``).
    ``targets``:
        ``B`` dicts with ``labels`` int64 ``[N_b]`` in ``0..C-1`` and ``boxes`` ``[N_b, 4]``.

    Returned dict (0-dim tensors):
        ``loss_ce``: sigmoid focal loss summed over all queries and classes / ``num_boxes``; a
            matched query's target is 1 for its target's class (for every target it is matched to),
            everything else 0.
        ``loss_bbox``, ``loss_giou``: L1 and ``1 - GIoU`` of matched pairs, summed / ``num_boxes``.
        ``cardinality_error``: mean over images of ``|#queries with max probability > 0.5 - N_b|``;
            ``class_error``: ``100 -`` top-1 accuracy (%) of matched queries (both logging only).
        The same terms suffixed ``_{i}`` for ``aux_outputs[i]`` and ``_enc`` for ``enc_outputs`` (class-
        agnostic: every target has label 0).
        ``loss``: weighted sum of ``loss_ce``/``loss_bbox``/``loss_giou`` and all their copies (a copy has
            the weight of its final-layer term).

    ``num_boxes`` is the batch's number of target boxes averaged over ranks, clamped at 1, for every term
    (also for one-to-many assignment, where there are more matched pairs than boxes).

    Args:
        num_classes: ``C``, the number of object classes.
        matcher: Hungarian matcher (``class_cost="focal"``) for every output not IoU-assigned.
        loss_weights: Weights of ``ce``, ``bbox``, ``giou``; missing keys default to 2, 5, 2.
        focal_alpha: Weight of positives in the focal loss (negatives get ``1 - focal_alpha``).
        focal_gamma: Focusing exponent of the focal loss.
        assign_first_stage: Assign ``enc_outputs`` by anchor IoU (:class:`Stage1Assigner`).
        assign_second_stage: Assign decoder layers by ``init_reference`` IoU (:class:`Stage2Assigner`),
            once per batch, reused for every layer.
        num_queries: Number of decoder queries, the stage-2 sample size.
        stage1_negative_below, stage1_positive_from, stage1_samples_per_image, stage1_positive_fraction:
            Stage-1 IoU thresholds and sampling (0.3, 0.7, 256, 0.5).
        stage2_positive_from, stage2_positive_fraction: Stage-2 IoU threshold and sampling (0.6, 0.25).
        max_positives_per_target: Top-k per target of both stages (4).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        loss_weights: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        assign_first_stage: bool = False,
        assign_second_stage: bool = False,
        num_queries: int = 300,
        stage1_negative_below: float = 0.3,
        stage1_positive_from: float = 0.7,
        stage1_samples_per_image: int = 256,
        stage1_positive_fraction: float = 0.5,
        stage2_positive_from: float = 0.6,
        stage2_positive_fraction: float = 0.25,
        max_positives_per_target: int = 4,
    ) -> None:
        weights = dict(DEFORMABLE_LOSS_WEIGHTS)
        weights.update(loss_weights or {})
        super().__init__(num_classes, matcher, loss_weights=weights)
        # The softmax "no object" class weight of the parent has no meaning for sigmoid logits.
        del self.empty_weight
        self.eos_coef = None
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.assign_first_stage = bool(assign_first_stage)
        self.assign_second_stage = bool(assign_second_stage)
        self.num_queries = int(num_queries)
        self.stage1_assigner = (
            Stage1Assigner(
                stage1_negative_below,
                stage1_positive_from,
                stage1_samples_per_image,
                stage1_positive_fraction,
                max_positives_per_target,
            )
            if self.assign_first_stage
            else None
        )
        self.stage2_assigner = (
            Stage2Assigner(
                num_queries, stage2_positive_from, stage2_positive_fraction, max_positives_per_target
            )
            if self.assign_second_stage
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma}, weight_dict={self.weight_dict}, "
            f"assign_first_stage={self.assign_first_stage}, assign_second_stage={self.assign_second_stage}"
        )

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Compute all terms and their weighted sum; see the class docstring for the keys."""
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"DeformableSetCriterion: pred_logits has {logits.shape[-1]} classes in its last dim but "
                f"num_classes={self.num_classes}; sigmoid logits have one column per class and no "
                "'no object' column, so make the criterion's num_classes match the detector's"
            )
        if len(targets) != logits.shape[0]:
            raise ValueError(
                f"DeformableSetCriterion: got {len(targets)} target dicts for a batch of "
                f"{logits.shape[0]} images; pass exactly one target dict per image"
            )
        all_labels = torch.cat([t["labels"].reshape(-1) for t in targets])
        if bool(((all_labels < 0) | (all_labels >= self.num_classes)).any()):
            raise ValueError(
                f"DeformableSetCriterion: target labels span [{int(all_labels.min())}, "
                f"{int(all_labels.max())}] but must be contiguous class indices in 0..{self.num_classes - 1}; "
                "map the dataset's category ids to contiguous labels (or fix num_classes)"
            )
        num_boxes = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=logits.device)
        num_boxes = average_across_ranks(num_boxes).clamp(min=1.0)

        decoder_indices = None
        if self.stage2_assigner is not None:
            if "init_reference" not in outputs:
                raise KeyError(
                    "DeformableSetCriterion: assign_second_stage needs outputs['init_reference'] "
                    "[B, Q, 4] (the decoder's input proposal boxes); use a two-stage detector or set "
                    "assign_second_stage=false"
                )
            # One assignment for all decoder layers: it depends on the layers' shared input boxes only.
            decoder_indices = self.stage2_assigner(outputs["init_reference"], targets)

        layers = [("", outputs)]
        layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs") or [])]
        suffixed_terms = []
        for suffix, layer_outputs in layers:
            indices = decoder_indices if decoder_indices is not None else self.matcher(layer_outputs, targets)
            suffixed_terms.append((suffix, self.matched_losses(layer_outputs, targets, indices, num_boxes)))
        if outputs.get("enc_outputs") is not None:
            enc_outputs = outputs["enc_outputs"]
            # Class-agnostic proposals: every target is "object" (label 0).
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            indices = self.encoder_indices(enc_outputs, agnostic)
            suffixed_terms.append(("_enc", self.matched_losses(enc_outputs, agnostic, indices, num_boxes)))

        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=logits.device)
        for suffix, terms in suffixed_terms:
            for name, weight in self.weight_dict.items():
                total = total + weight * terms[name]
            losses.update({name + suffix: value for name, value in terms.items()})
        losses["loss"] = total
        return losses

    def layer_losses(
        self, outputs: dict[str, Tensor], targets: list[dict], num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Hungarian-match one decoder layer's predictions and compute its unsuffixed terms."""
        return self.matched_losses(outputs, targets, self.matcher(outputs, targets), num_boxes)

    def matched_losses(
        self, outputs: dict[str, Tensor], targets: list[dict], indices: Indices, num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Unsuffixed terms of one output (decoder layer or encoder) for given matches."""
        terms = self.class_loss(outputs, targets, indices, num_boxes)
        terms.update(self.box_losses(outputs, targets, indices, num_boxes))
        terms.update(self.diagnostics(outputs, targets, indices))
        return terms

    def encoder_indices(self, enc_outputs: dict[str, Tensor], targets: list[dict]) -> Indices:
        """Matches of the encoder's proposals: IoU of the anchors (stage 1) or Hungarian on valid tokens."""
        valid = enc_outputs.get("valid")
        if self.stage1_assigner is not None:
            if "anchors" not in enc_outputs:
                raise KeyError(
                    "DeformableSetCriterion: assign_first_stage needs enc_outputs['anchors'] [B, S, 4] "
                    "(the unrefined proposal boxes); have the detector return them or set "
                    "assign_first_stage=false"
                )
            return self.stage1_assigner(enc_outputs["anchors"], targets, valid)
        if valid is None:
            return self.matcher(enc_outputs, targets)
        # Invalid tokens differ per image, so match each image on its valid tokens alone.
        indices = []
        for b, target in enumerate(targets):
            keep = valid[b].nonzero().squeeze(1)
            image_outputs = {
                "pred_logits": enc_outputs["pred_logits"][b, keep][None],
                "pred_boxes": enc_outputs["pred_boxes"][b, keep][None],
            }
            query, target_idx = self.matcher(image_outputs, [target])[0]
            indices.append((keep.cpu()[query], target_idx))
        return indices

    def class_loss(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict],
        indices: Indices,
        num_boxes: Tensor,
    ) -> dict[str, Tensor]:
        """``loss_ce``: sigmoid focal loss over all queries and classes, summed / ``num_boxes``.

        Unlike the softmax parent, the normalizer ``num_boxes`` (0-dim) is an argument: the focal
        loss is a sum over all ``B * Q * C`` entries, normalized like the box losses.
        """
        logits = upcast_to_float32(outputs["pred_logits"])
        batch_idx, query_idx = matched_query_index(indices, logits.device)
        labels = matched_target_values(targets, indices, "labels", logits.device)
        # Multi-hot, not argmax-style: with one-to-many assignment a query may be matched to two
        # targets, and it should then be pushed towards both classes, independent of write order.
        target = torch.zeros_like(logits)
        target[batch_idx, query_idx, labels] = 1.0
        loss = sigmoid_focal_loss(
            logits, target, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        return {"loss_ce": loss / num_boxes}

    def count_predicted_objects(self, logits: Tensor) -> Tensor:
        """``[B]`` number of queries per image whose most likely class has probability > 0.5."""
        return (logits.amax(dim=-1) > 0).sum(dim=1)
