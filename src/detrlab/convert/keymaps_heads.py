"""Key rules shared by every deformable-family format: input projections and class / box heads."""

from __future__ import annotations

import re

from detrlab.convert.keymap import Rule

__all__ = ["deformable_head_rules", "input_projection_rule"]


def input_projection_rule(prefix: str, num_backbone_levels: int) -> Rule:
    """``{prefix}input_proj.{l}.{0=conv,1=GroupNorm}`` -> our ``lateral`` (backbone levels) / ``extra`` levels."""

    def rename(match: re.Match) -> str:
        level = int(match["level"])
        group = f"lateral.{level}" if level < num_backbone_levels else f"extra.{level - num_backbone_levels}"
        return f"input_proj.{group}.{match['rest']}"

    return Rule(rf"{prefix}input_proj\.(?P<level>\d+)\.(?P<rest>[01]\.\w+)", rename)


def deformable_head_rules(alias_prefix: str, with_box_refine: bool) -> list[Rule]:
    """Per-layer class / box heads and their aliases.

    Foreign checkpoints list one head per prediction (decoder layers, + the encoder with two-stage),
    also when they are one shared module (no refinement), and repeat them under ``alias_prefix``
    (the decoder's references). Without refinement every copy maps onto our single head ``0``; the
    copies must be equal. Box MLP layer ``k`` is entry ``3k`` of torchvision's ``MLP`` (Linear,
    ReLU, Dropout, ...).
    """

    def head(match: re.Match) -> str:
        return match["n"] if with_box_refine else "0"

    alias = rf"(?:{alias_prefix})?"
    return [
        Rule(rf"{alias}class_embed\.(?P<n>\d+)\.(?P<p>\w+)", lambda m: f"class_embed.{head(m)}.{m['p']}"),
        Rule(
            rf"{alias}bbox_embed\.(?P<n>\d+)\.layers\.(?P<k>\d)\.(?P<p>\w+)",
            lambda m: f"bbox_embed.{head(m)}.{3 * int(m['k'])}.{m['p']}",
        ),
    ]
