"""Key maps of ResNet backbones: Hugging Face ``ResNetModel`` names and torchvision / timm names."""

from __future__ import annotations

import re

from detrlab.convert.keymap import Rule

__all__ = ["hf_resnet_rules", "torchvision_resnet_rules"]

_OURS = "backbone.body."


def torchvision_resnet_rules(prefix: str) -> list[Rule]:
    """Backbones stored with torchvision's names (original repositories, timm ``features_only``).

    Args:
        prefix: regex of the foreign prefix before ``conv1.`` / ``layer1.`` (e.g. ``backbone\\.0\\.body\\.``).
    """
    return [
        Rule(rf"{prefix}.*\.num_batches_tracked", None),
        Rule(rf"{prefix}((?:conv1|bn1|layer[1-4])\..*)", _OURS + r"\1"),
    ]


def _stage_block(match: re.Match) -> str:
    return f"{_OURS}layer{int(match['stage']) + 1}.{match['block']}."


def hf_resnet_rules(prefix: str) -> list[Rule]:
    """Backbones stored as transformers ``ResNetBackbone`` (``embedder`` / ``encoder.stages``).

    HF stage ``s`` layer ``l`` is torchvision ``layer{s+1}.{l}``; its ``layer.{i}`` conv + norm pairs
    are ``conv{i+1}`` / ``bn{i+1}`` and its ``shortcut`` is ``downsample.0`` / ``downsample.1``.
    """
    block = rf"{prefix}encoder\.stages\.(?P<stage>\d+)\.layers\.(?P<block>\d+)\."
    return [
        Rule(rf"{prefix}.*\.num_batches_tracked", None),
        Rule(rf"{prefix}embedder\.embedder\.convolution\.(\w+)", _OURS + r"conv1.\1"),
        Rule(rf"{prefix}embedder\.embedder\.normalization\.(\w+)", _OURS + r"bn1.\1"),
        Rule(
            rf"{block}shortcut\.convolution\.(?P<p>\w+)", lambda m: f"{_stage_block(m)}downsample.0.{m['p']}"
        ),
        Rule(
            rf"{block}shortcut\.normalization\.(?P<p>\w+)",
            lambda m: f"{_stage_block(m)}downsample.1.{m['p']}",
        ),
        Rule(
            rf"{block}layer\.(?P<i>\d+)\.convolution\.(?P<p>\w+)",
            lambda m: f"{_stage_block(m)}conv{int(m['i']) + 1}.{m['p']}",
        ),
        Rule(
            rf"{block}layer\.(?P<i>\d+)\.normalization\.(?P<p>\w+)",
            lambda m: f"{_stage_block(m)}bn{int(m['i']) + 1}.{m['p']}",
        ),
    ]
