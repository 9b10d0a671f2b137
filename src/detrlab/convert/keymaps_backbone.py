"""Key maps of ResNet backbones: Hugging Face ``ResNetModel`` names and torchvision / timm names."""

from __future__ import annotations

import re

from detrlab.convert.keymap import Rule

__all__ = ["hf_resnet_rules", "hf_swin_rules", "original_swin_rules", "torchvision_resnet_rules"]

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


_SWIN_BLOCK_PARTS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def _swin_next_stage_downsample(match: re.Match) -> str:
    # Swin checkpoints keep patch merging at the end of stage i; timm at the start of stage i + 1.
    return f"{_OURS}layers_{int(match['stage']) + 1}.downsample.{match['rest']}"


def hf_swin_rules(prefix: str, return_stages: list[int]) -> list[Rule]:
    """Backbones stored as transformers ``SwinBackbone``, into our timm-based ``SwinBackbone``.

    Separate query / key / value projections become timm's fused ``qkv``; the per-output-stage
    ``hidden_states_norms.stage{k}`` become our ``norms.{index of k in return_stages}``.
    """
    block = rf"{prefix}encoder\.layers\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\."

    def block_key(suffix: str):
        return lambda m: f"{_OURS}layers_{m['stage']}.blocks.{m['block']}.{suffix.format(p=m['p'])}"

    rules = [
        Rule(rf"{prefix}.*\.relative_position_index", None),
        Rule(rf"{prefix}embeddings\.patch_embeddings\.projection\.(\w+)", _OURS + r"patch_embed.proj.\1"),
        Rule(rf"{prefix}embeddings\.norm\.(\w+)", _OURS + r"patch_embed.norm.\1"),
        Rule(
            rf"{prefix}encoder\.layers\.(?P<stage>\d+)\.downsample\.(?P<rest>.*)", _swin_next_stage_downsample
        ),
        Rule(
            rf"{block}attention\.self\.relative_position_bias_table",
            lambda m: f"{_OURS}layers_{m['stage']}.blocks.{m['block']}.attn.relative_position_bias_table",
        ),
        Rule(
            rf"{prefix}hidden_states_norms\.stage(?P<stage>\d)\.(?P<p>\w+)",
            lambda m: f"backbone.norms.{return_stages.index(int(m['stage']))}.{m['p']}",
        ),
    ]
    for slot, name in enumerate(("query", "key", "value")):
        rules.append(
            Rule(rf"{block}attention\.self\.{name}\.(?P<p>\w+)", block_key("attn.qkv.{p}"), part=slot)
        )
    for theirs, ours in _SWIN_BLOCK_PARTS.items():
        rules.append(Rule(rf"{block}{re.escape(theirs)}\.(?P<p>\w+)", block_key(ours + ".{p}")))
    return rules


def original_swin_rules(prefix: str, return_stages: list[int]) -> list[Rule]:
    """Backbones stored with the Swin repository's names (``layers.{i}.blocks``, ``norm{k}`` per output).

    Those names are timm's except for the stage separator, the patch-merging position and the output
    norms, which the Swin detection backbone names after the output index (``norm1`` = stage 2 ...).
    """
    return [
        Rule(rf"{prefix}.*\.(?:relative_position_index|attn_mask)", None),
        Rule(rf"{prefix}patch_embed\.(.*)", _OURS + r"patch_embed.\1"),
        Rule(rf"{prefix}layers\.(?P<stage>\d+)\.downsample\.(?P<rest>.*)", _swin_next_stage_downsample),
        Rule(rf"{prefix}layers\.(\d+)\.blocks\.(.*)", _OURS + r"layers_\1.blocks.\2"),
        Rule(
            rf"{prefix}norm(?P<index>\d)\.(?P<p>\w+)",
            lambda m: f"backbone.norms.{return_stages.index(int(m['index']) + 1)}.{m['p']}",
        ),
    ]
