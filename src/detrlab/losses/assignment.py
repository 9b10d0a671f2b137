"""Assignment strategies of the set criterion: which prediction learns from which target.

A strategy answers two questions for one batch: the ``(query, target)`` pairs of every decoder
layer (final layer first, then the auxiliary layers in order), and those of the two-stage
encoder's proposals. :class:`HungarianAssignment` matches every output one-to-one;
:class:`DetaAssignment` replaces that with DETA's one-to-many IoU assignment for the encoder
(stage 1, IoU of the anchors) and / or the decoder (stage 2, IoU of the decoder's input boxes),
and keeps Hungarian matching for whatever a stage does not cover.
"""

from __future__ import annotations

from torch import Tensor, nn

from detrlab.losses.assigner import Stage1Assigner, Stage2Assigner
from detrlab.losses.matched import Indices

__all__ = ["DetaAssignment", "HungarianAssignment"]


class HungarianAssignment(nn.Module):
    """One-to-one Hungarian matching of every supervised output, each layer matched on its own.

    Args:
        matcher: ``matcher(outputs, targets) -> Indices`` (:class:`~detrlab.losses.matcher.HungarianMatcher`),
            ``outputs`` holding ``pred_logits`` ``[B, Q, K]`` and ``pred_boxes`` ``[B, Q, 4]``.
    """

    def __init__(self, matcher: nn.Module) -> None:
        super().__init__()
        self.matcher = matcher

    def decoder_indices(self, outputs: dict, targets: list[dict[str, Tensor]]) -> list[Indices]:
        """Pairs of ``[outputs, *outputs["aux_outputs"]]``, one list per decoder layer."""
        layers = [outputs, *(outputs.get("aux_outputs") or [])]
        return [self.matcher(layer, targets) for layer in layers]

    def encoder_indices(self, enc_outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> Indices:
        """Pairs of the encoder proposals; with ``enc_outputs["valid"]`` ``[B, S]`` only valid tokens match.

        Args:
            enc_outputs: ``pred_logits`` ``[B, S, K]``, ``pred_boxes`` ``[B, S, 4]``, optional
                ``valid`` bool ``[B, S]`` and ``anchors`` ``[B, S, 4]``.
            targets: ``B`` dicts with ``labels`` ``[N_b]`` and ``boxes`` ``[N_b, 4]``.
        """
        valid = enc_outputs.get("valid")
        if valid is None:
            return self.matcher(enc_outputs, targets)
        # Invalid tokens differ per image, so match each image on its valid tokens alone.
        # One copy of the mask to the host for the batch; the token indices are found there.
        valid_host = valid.cpu()
        indices = []
        for b, target in enumerate(targets):
            keep = valid_host[b].nonzero().squeeze(1)
            keep_device = keep.to(valid.device, non_blocking=True)
            image_outputs = {
                "pred_logits": enc_outputs["pred_logits"][b, keep_device][None],
                "pred_boxes": enc_outputs["pred_boxes"][b, keep_device][None],
            }
            query, target_idx = self.matcher(image_outputs, [target])[0]
            indices.append((keep[query], target_idx))
        return indices


class DetaAssignment(HungarianAssignment):
    """DETA's IoU assignment: one-to-many by the overlap of a stage's *input* boxes with the targets.

    Args:
        matcher: Hungarian matcher for the outputs that no IoU stage assigns.
        stage1_assigner: Assigns the encoder proposals by IoU of ``enc_outputs["anchors"]``
            (``None``: Hungarian).
        stage2_assigner: Assigns the decoder queries by IoU of ``outputs["init_reference"]``, once per
            batch and the same for every decoder layer, since all layers share those input boxes
            (``None``: Hungarian per layer).
    """

    def __init__(
        self,
        matcher: nn.Module,
        stage1_assigner: Stage1Assigner | None = None,
        stage2_assigner: Stage2Assigner | None = None,
    ) -> None:
        super().__init__(matcher)
        self.stage1_assigner = stage1_assigner
        self.stage2_assigner = stage2_assigner

    @property
    def assign_first_stage(self) -> bool:
        return self.stage1_assigner is not None

    @property
    def assign_second_stage(self) -> bool:
        return self.stage2_assigner is not None

    def decoder_indices(self, outputs: dict, targets: list[dict[str, Tensor]]) -> list[Indices]:
        if self.stage2_assigner is None:
            return super().decoder_indices(outputs, targets)
        if "init_reference" not in outputs:
            raise KeyError(
                "DetaAssignment: stage2_assigner needs outputs['init_reference'] [B, Q, 4] (the decoder's "
                "input proposal boxes); use a two-stage detector or model/assigner=hungarian"
            )
        indices = self.stage2_assigner(outputs["init_reference"], targets)
        return [indices] * (1 + len(outputs.get("aux_outputs") or []))

    def encoder_indices(self, enc_outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> Indices:
        if self.stage1_assigner is None:
            return super().encoder_indices(enc_outputs, targets)
        if "anchors" not in enc_outputs:
            raise KeyError(
                "DetaAssignment: stage1_assigner needs enc_outputs['anchors'] [B, S, 4] (the unrefined "
                "proposal boxes); have the detector return them or model/assigner=hungarian"
            )
        return self.stage1_assigner(enc_outputs["anchors"], targets, enc_outputs.get("valid"))
