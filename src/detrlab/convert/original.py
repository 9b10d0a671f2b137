"""Read an original-repository checkpoint: ``{'model': state_dict, 'args': Namespace | dict, ...}``.

Covers facebookresearch/detr, fundamentalvision/Deformable-DETR and jozhang97/DETA (ResNet and,
for the deformable detectors, Swin backbones). Hyper-parameters come from ``args``; when it is absent, the ones the weights determine
(widths, depths, levels, refinement, two-stage, class count) are read from tensor shapes, and the
others take the repository's defaults, each recorded in ``ConvertedModel.notes``.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detrlab.convert.averaged_weights import select_model_state
from detrlab.convert.detector_config import (
    ConvertedModel,
    deformable_module_config,
    detr_module_config,
    resnet_backbone_config,
    swin_backbone_config,
)
from detrlab.convert.keymap import CheckpointConversionError, Rule
from detrlab.convert.keymaps_original import original_deformable_rules, original_detr_rules

__all__ = ["read_original_checkpoint"]

log = logging.getLogger(__name__)


class _Args:
    """``args`` of the checkpoint with defaults; remembers which values were assumed."""

    def __init__(self, args: Any, defaults: dict[str, Any]) -> None:
        if isinstance(args, argparse.Namespace):
            args = vars(args)
        self.values: dict[str, Any] = dict(args) if isinstance(args, Mapping) else {}
        self.defaults = defaults
        self.notes: list[str] = []

    def __call__(self, name: str, inferred: Any = None) -> Any:
        if name in self.values and self.values[name] is not None:
            return self.values[name]
        value = inferred if inferred is not None else self.defaults[name]
        how = "read from the weights' shapes" if inferred is not None else "assumed (repository default)"
        self.notes.append(f"{name}={value!r}: not in the checkpoint's args, {how}")
        return value


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    indices = {int(m[1]) for k in state if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def _backbone_config(
    state: Mapping[str, Tensor], args: _Args, path: Path, stages: list[int]
) -> dict[str, Any]:
    """The ResNet or Swin, read from the weights' shapes (authoritative over ``args.backbone``)."""
    if _is_swin(state):
        return _swin_config(state, args, stages)
    body = "backbone.0.body."
    if f"{body}conv1.weight" not in state:
        raise CheckpointConversionError(f"{path}: no ResNet backbone found (no '{body}conv1.weight').")
    bottleneck = f"{body}layer1.0.conv3.weight" in state
    last_conv = "conv3" if bottleneck else "conv2"
    widths = [int(state[f"{body}layer{i}.0.{last_conv}.weight"].shape[0]) for i in range(1, 5)]
    blocks = [_count(state, rf"backbone\.0\.body\.layer{i}\.(\d+)\.") for i in range(1, 5)]
    return resnet_backbone_config(
        "bottleneck" if bottleneck else "basic",
        int(state[f"{body}conv1.weight"].shape[0]),
        widths,
        blocks,
        stages,
        bool(args("dilation")),
    )


def _transformer_sizes(state: Mapping[str, Tensor], args: _Args, ffn_from: str) -> dict[str, Any]:
    """Heads, layer counts, FFN width and dropout; counts and width read from the weights when
    ``args`` lacks them (the FFN width from the first ``ffn_from`` = encoder / decoder layer)."""
    return {
        "nheads": int(args("nheads")),
        "num_encoder_layers": int(
            args("enc_layers", _count(state, r"transformer\.encoder\.layers\.(\d+)\."))
        ),
        "num_decoder_layers": int(
            args("dec_layers", _count(state, r"transformer\.decoder\.layers\.(\d+)\."))
        ),
        "dim_feedforward": int(
            args("dim_feedforward", state[f"transformer.{ffn_from}.layers.0.linear1.weight"].shape[0])
        ),
        "dropout": float(args("dropout")),
    }


def _is_swin(state: Mapping[str, Tensor]) -> bool:
    return "backbone.0.body.patch_embed.proj.weight" in state


def _swin_config(state: Mapping[str, Tensor], args: _Args, stages: list[int]) -> dict[str, Any]:
    """Swin architecture from the weights: widths, blocks per stage, heads and window from the
    relative-position tables (``(2 * window - 1) ** 2`` rows, one column per head)."""
    body = "backbone.0.body."
    depths = [_count(state, rf"backbone\.0\.body\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4)]
    tables = [state[f"{body}layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(4)]
    window = (math.isqrt(int(tables[0].shape[0])) + 1) // 2
    return swin_backbone_config(
        embed_dim=int(state[f"{body}patch_embed.proj.weight"].shape[0]),
        depths=depths,
        num_heads=[int(t.shape[1]) for t in tables],
        window_size=window,
        # the layout where no stage is smaller than the window (Swin-L: 384 px, window 12)
        pretrain_img_size=32 * window,
        return_stages=stages,
        drop_path_rate=float(args("drop_path_rate")),
    )


def _optim(args: _Args, lr: float, lr_backbone: float, lr_drop: int, epochs: int) -> dict[str, Any]:
    values = args.values
    # The original scripts drop once, after `lr_drop` of `epochs`: our schedule keeps the fraction.
    drop, total = int(values.get("lr_drop", lr_drop)), int(values.get("epochs", epochs))
    return {
        "lr": float(values.get("lr", lr)),
        "lr_backbone": float(values.get("lr_backbone", lr_backbone)),
        "weight_decay": float(values.get("weight_decay", 1e-4)),
        "lr_linear_proj_mult": float(values.get("lr_linear_proj_mult", 0.1)),
        "schedule": {"lr_drops": [f"{drop}/{total}"] if 0 < drop < total else []},
    }


def _deformable(state: Mapping[str, Tensor], raw_args: Any, path: Path) -> tuple[ConvertedModel, list[Rule]]:
    # DETA adds proposal features (``pix_trans``) with two-stage, and its args name the assigners.
    deta = "transformer.pix_trans.weight" in state or "assign_first_stage" in _Args(raw_args, {}).values
    two_stage_inferred = "transformer.enc_output.weight" in state
    refine_inferred = any(k.startswith("transformer.decoder.bbox_embed.") for k in state)
    defaults = {
        "num_queries": 900 if deta else 300,
        "nheads": 8,
        "enc_n_points": 4,
        "dec_n_points": 4,
        "dropout": 0.0 if deta else 0.1,
        "dilation": False,
        "aux_loss": True,
        "set_cost_class": 2.0,
        "set_cost_bbox": 5.0,
        "set_cost_giou": 2.0,
        "cls_loss_coef": 1.0 if deta else 2.0,
        "bbox_loss_coef": 5.0,
        "giou_loss_coef": 2.0,
        "focal_alpha": 0.25,
        # Swin backbones only: DETA's Swin-L recipe
        "drop_path_rate": 0.3,
        "assign_first_stage": deta,
        "assign_second_stage": deta,
    }
    args = _Args(raw_args, defaults)
    level_embed = state["transformer.level_embed"]
    num_levels = args("num_feature_levels", level_embed.shape[0])
    hidden_dim = args("hidden_dim", level_embed.shape[1])
    two_stage = bool(args("two_stage", two_stage_inferred))
    refine = bool(args("with_box_refine", refine_inferred))
    num_queries = args("num_queries", None if two_stage else state["query_embed.weight"].shape[0])
    stages = [2, 3, 4] if num_levels > 1 else [4]
    detector = {
        # the class (DETA or DeformableDETR) follows from the options: deformable_module_config
        "backbone": _backbone_config(state, args, path, stages),
        "num_classes": int(state["class_embed.0.weight"].shape[0]),
        "num_queries": int(num_queries),
        "hidden_dim": int(hidden_dim),
        **_transformer_sizes(state, args, "encoder"),
        "num_feature_levels": int(num_levels),
        "enc_n_points": int(args("enc_n_points")),
        "dec_n_points": int(args("dec_n_points")),
        "with_box_refine": refine,
        "two_stage": two_stage,
        "add_proposal_features": deta and two_stage,
        "assign_first_stage": bool(args("assign_first_stage")) and deta and two_stage,
        "pre_nms_topk": 1000,
        "proposal_nms_iou": 0.9,
        "aux_loss": bool(args("aux_loss")),
        "attention_implementation": "auto",
    }
    module = deformable_module_config(
        detector,
        costs=(args("set_cost_class"), args("set_cost_bbox"), args("set_cost_giou")),
        loss_weights=(args("cls_loss_coef"), args("bbox_loss_coef"), args("giou_loss_coef")),
        focal_alpha=float(args("focal_alpha")),
        assign_second_stage=bool(args("assign_second_stage")) and deta and two_stage,
        criterion_num_queries=int(num_queries),
        optim=_optim(args, 2e-4, 2e-5, 40, 50),
    )
    family = "deta" if deta else "deformable_detr"
    converted = ConvertedModel(family, module, f"{path} (original {family} checkpoint)", args.notes)
    swin_stages = stages if _is_swin(state) else None
    return converted, original_deformable_rules(min(num_levels, len(stages)), refine, swin_stages)


def _detr(state: Mapping[str, Tensor], raw_args: Any, path: Path) -> tuple[ConvertedModel, list[Rule]]:
    if _is_swin(state):
        raise CheckpointConversionError(
            f"{path}: DETR checkpoints with a Swin backbone are not supported (ResNet ones are)."
        )
    defaults = {
        "nheads": 8,
        "dropout": 0.1,
        "dilation": False,
        "aux_loss": True,
        "pre_norm": False,
        "set_cost_class": 1.0,
        "set_cost_bbox": 5.0,
        "set_cost_giou": 2.0,
        "bbox_loss_coef": 5.0,
        "giou_loss_coef": 2.0,
        "eos_coef": 0.1,
    }
    args = _Args(raw_args, defaults)
    learned = "backbone.1.row_embed.weight" in state
    position = args("position_embedding", "learned" if learned else "sine")
    position = {"v2": "sine", "v3": "learned"}.get(position, position)
    detector = {
        "_target_": "detrlab.models.detr.DETR",
        "backbone": _backbone_config(state, args, path, [4]),
        "num_classes": int(state["class_embed.weight"].shape[0]) - 1,
        "num_queries": int(args("num_queries", state["query_embed.weight"].shape[0])),
        "hidden_dim": int(args("hidden_dim", state["query_embed.weight"].shape[1])),
        **_transformer_sizes(state, args, "decoder"),
        "position_encoding": position,
        "aux_loss": bool(args("aux_loss")),
        "normalize_before": bool(args("pre_norm")),
    }
    module = detr_module_config(
        detector,
        costs=(args("set_cost_class"), args("set_cost_bbox"), args("set_cost_giou")),
        loss_weights=(1.0, args("bbox_loss_coef"), args("giou_loss_coef")),
        eos_coef=float(args("eos_coef")),
        optim=_optim(args, 1e-4, 1e-5, 200, 300),
    )
    return ConvertedModel(
        "detr", module, f"{path} (original detr checkpoint)", args.notes
    ), original_detr_rules()


def read_original_checkpoint(path: Path) -> tuple[ConvertedModel, list[Rule], dict[str, Tensor]]:
    """Model description, key rules and weights of an original-repository ``.pth`` file."""
    # The original checkpoints pickle an argparse Namespace next to the tensors.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    selected = select_model_state(checkpoint) if isinstance(checkpoint, Mapping) else None
    if selected is None:
        raise CheckpointConversionError(
            f"{path} is not an original DETR / Deformable DETR / DETA checkpoint: expected a dict with a "
            "'model' state dict (and usually 'args'). Hugging Face models are directories with config.json."
        )
    state, which_weights = selected
    log.info("%s: converting its %s", path, which_weights)
    raw_args = checkpoint.get("args")
    if "transformer.level_embed" in state:
        converted, rules = _deformable(state, raw_args, path)
    elif "transformer.decoder.norm.weight" in state:
        converted, rules = _detr(state, raw_args, path)
    else:
        raise CheckpointConversionError(
            f"{path}: the 'model' state dict has neither 'transformer.level_embed' (Deformable DETR / DETA) "
            "nor 'transformer.decoder.norm.weight' (DETR); it is not a detector checkpoint we can import."
        )
    if which_weights.startswith("EMA"):
        converted.source = f"{converted.source}, {which_weights}"
    if raw_args is None:
        log.warning("%s has no 'args'; hyper-parameters were inferred: %s", path, "; ".join(converted.notes))
    return converted, rules, state
