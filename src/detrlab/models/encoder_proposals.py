"""The scored encoder tokens that two-stage selection picks the decoder's queries from."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["EncoderProposals"]


class EncoderProposals(NamedTuple):
    """One proposal per encoder token (levels flattened and concatenated, S tokens in all).

    Attributes:
        scores: [B, S] objectness logits.
        boxes: [B, S, 4] sigmoid cxcywh boxes (only NMS selection reads them).
        valid: bool [B, S]: tokens that may be chosen (not padding, anchor inside the image).
        level_ids: long [S]: the level of every token (levels contiguous, in order).
    """

    scores: Tensor
    boxes: Tensor
    valid: Tensor
    level_ids: Tensor

    def ranking_scores(self) -> Tensor:
        """float32 [B, S] detached scores, ``-inf`` on invalid tokens so that they rank last."""
        return self.scores.detach().float().masked_fill(~self.valid, float("-inf"))
