"""Read a transformers ``save_pretrained`` directory of DETA, Deformable DETR or DETR.

The directory holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, or sharded
versions with an index). The configuration is read from ``config.json`` only; transformers itself
is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detrlab.convert.detector_config import (
    ConvertedModel,
    deformable_module_config,
    detr_module_config,
    named_resnet_config,
    resnet_backbone_config,
    swin_backbone_config,
)
from detrlab.convert.keymap import CheckpointConversionError, Rule
from detrlab.convert.keymaps_backbone import hf_resnet_rules, hf_swin_rules, torchvision_resnet_rules
from detrlab.convert.keymaps_hf import hf_deformable_rules, hf_detr_rules

__all__ = ["is_hf_directory", "read_hf_directory"]

SUPPORTED_MODEL_TYPES = ("deta", "deformable_detr", "detr")


def is_hf_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _load_weights(path: Path) -> dict[str, Tensor]:
    for index_name, loader in (
        ("model.safetensors.index.json", "safetensors"),
        ("pytorch_model.bin.index.json", "torch"),
    ):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(_load_file(path / shard, loader))
            return state
    if (path / "model.safetensors").is_file():
        return _load_file(path / "model.safetensors", "safetensors")
    if (path / "pytorch_model.bin").is_file():
        return _load_file(path / "pytorch_model.bin", "torch")
    raise CheckpointConversionError(
        f"{path} has a config.json but no weights: expected model.safetensors or pytorch_model.bin "
        "(as written by save_pretrained)."
    )


def _load_file(file: Path, loader: str) -> dict[str, Tensor]:
    if loader == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    return torch.load(file, map_location="cpu", weights_only=True)


def _require(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise CheckpointConversionError(f"{path / 'config.json'}: {message}")


def _shared_width(config: dict[str, Any], path: Path, encoder_key: str, decoder_key: str, what: str) -> int:
    enc, dec = config[encoder_key], config[decoder_key]
    _require(
        enc == dec,
        path,
        f"{encoder_key}={enc} and {decoder_key}={dec} differ; our detectors use one {what} for encoder and decoder",
    )
    return int(enc)


def _backbone(
    config: dict[str, Any], path: Path, prefix: str, deformable: bool
) -> tuple[dict, list[Rule], int]:
    """Our backbone config, its key rules and the number of backbone levels the detector uses.

    ``prefix`` is the regex of the key prefix of the backbone network in the checkpoint.
    """
    dilation = bool(config.get("dilation", False))
    num_levels = int(config.get("num_feature_levels", 1)) if deformable else 1
    if config.get("use_timm_backbone", False):
        name = config.get("backbone")
        _require(
            name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
            path,
            f"timm backbone {name!r} is not supported; ResNets (resnet18 ... resnet152) are",
        )
        stages = [2, 3, 4] if deformable and num_levels > 1 else [4]
        rules = torchvision_resnet_rules(prefix)
        return named_resnet_config(name, stages, dilation), rules, min(num_levels, len(stages))

    backbone = config.get("backbone_config") or {}
    kind = backbone.get("model_type", "resnet")
    if kind == "swin" and deformable:
        return _swin_backbone(backbone, path, prefix, num_levels)
    _require(
        kind == "resnet",
        path,
        f"backbone_config.model_type={kind!r} is not supported; ResNet and (for the deformable "
        "detectors) Swin backbones are",
    )
    _require(
        not backbone.get("downsample_in_first_stage", False)
        and not backbone.get("downsample_in_bottleneck", False),
        path,
        "ResNet variants that downsample in the first stage or in the bottleneck's 1x1 conv are not supported",
    )
    _require(backbone.get("hidden_act", "relu") == "relu", path, "only ReLU ResNets are supported")
    out_features = backbone.get("out_features") or ["stage4"]
    stages = sorted(int(name.removeprefix("stage")) for name in out_features)
    _require(all(1 <= s <= 4 for s in stages), path, f"unsupported backbone out_features {out_features}")
    if not deformable:
        stages = stages[-1:]
    cfg = resnet_backbone_config(
        backbone.get("layer_type", "bottleneck"),
        int(backbone.get("embedding_size", 64)),
        [int(w) for w in backbone.get("hidden_sizes", [256, 512, 1024, 2048])],
        [int(d) for d in backbone.get("depths", [3, 4, 6, 3])],
        stages,
        dilation,
    )
    return cfg, hf_resnet_rules(prefix), min(num_levels, len(stages))


def _swin_backbone(
    backbone: dict[str, Any], path: Path, prefix: str, num_levels: int
) -> tuple[dict, list[Rule], int]:
    """A transformers ``SwinConfig`` backbone as our timm-based ``SwinBackbone``."""
    _require(backbone.get("patch_size", 4) == 4, path, "only Swin with patch size 4 is supported")
    _require(float(backbone.get("mlp_ratio", 4.0)) == 4.0, path, "only Swin with mlp_ratio 4 is supported")
    _require(backbone.get("qkv_bias", True), path, "only Swin with q/k/v biases is supported")
    _require(backbone.get("hidden_act", "gelu") == "gelu", path, "only GELU Swin blocks are supported")
    _require(
        not backbone.get("use_absolute_embeddings", False),
        path,
        "Swin with absolute position embeddings is not supported",
    )
    out_features = backbone.get("out_features") or ["stage4"]
    stages = sorted(int(name.removeprefix("stage")) for name in out_features)
    _require(all(1 <= s <= 4 for s in stages), path, f"unsupported Swin out_features {out_features}")
    image_size = backbone.get("image_size", 224)
    cfg = swin_backbone_config(
        embed_dim=int(backbone.get("embed_dim", 96)),
        depths=list(backbone.get("depths", [2, 2, 6, 2])),
        num_heads=list(backbone.get("num_heads", [3, 6, 12, 24])),
        window_size=int(backbone.get("window_size", 7)),
        pretrain_img_size=int(image_size[0] if isinstance(image_size, list) else image_size),
        return_stages=stages,
        drop_path_rate=float(backbone.get("drop_path_rate", 0.1)),
    )
    return cfg, hf_swin_rules(prefix, stages), min(num_levels, len(stages))


def _transformer_sizes(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Width, heads, layer counts, FFN width and dropout (one value each for encoder and decoder)."""
    return {
        "hidden_dim": int(config["d_model"]),
        "nheads": _shared_width(
            config, path, "encoder_attention_heads", "decoder_attention_heads", "head count"
        ),
        "num_encoder_layers": int(config["encoder_layers"]),
        "num_decoder_layers": int(config["decoder_layers"]),
        "dim_feedforward": _shared_width(
            config, path, "encoder_ffn_dim", "decoder_ffn_dim", "feed-forward width"
        ),
        "dropout": float(config.get("dropout", 0.1)),
    }


def _num_labels(config: dict[str, Any]) -> int:
    if config.get("id2label"):
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


def _deformable(config: dict[str, Any], path: Path, deta: bool) -> tuple[ConvertedModel, list[Rule]]:
    # DETA keeps the backbone network under ``backbone.model``, the others under ``backbone.conv_encoder.model``.
    prefix = r"model\.backbone\.model\." if deta else r"model\.backbone\.conv_encoder\.model\."
    backbone, backbone_rules, num_backbone_levels = _backbone(config, path, prefix, deformable=True)
    _require(
        config.get("activation_function", "relu") == "relu",
        path,
        "only ReLU feed-forward blocks are supported",
    )
    _require(
        config.get("position_embedding_type", "sine") == "sine",
        path,
        "only sine position embeddings are supported",
    )
    two_stage = bool(config.get("two_stage", deta))
    refine = bool(config.get("with_box_refine", deta))
    num_queries = int(config["two_stage_num_proposals"] if two_stage else config["num_queries"])
    assign_first = bool(config.get("assign_first_stage", False)) and deta and two_stage
    detector = {
        # the class (DETA or DeformableDETR) follows from the options: deformable_module_config
        "backbone": backbone,
        "num_classes": _num_labels(config),
        "num_queries": num_queries,
        **_transformer_sizes(config, path),
        "num_feature_levels": int(config["num_feature_levels"]),
        "enc_n_points": int(config["encoder_n_points"]),
        "dec_n_points": int(config["decoder_n_points"]),
        "with_box_refine": refine,
        "two_stage": two_stage,
        # DETA's two-stage queries always add the proposals' features (``pix_trans``).
        "add_proposal_features": deta and two_stage,
        "assign_first_stage": assign_first,
        "pre_nms_topk": 1000,
        "proposal_nms_iou": 0.9,
        "aux_loss": bool(config.get("auxiliary_loss", False)),
        "attention_implementation": "auto",
    }
    module = deformable_module_config(
        detector,
        costs=(config.get("class_cost", 1), config.get("bbox_cost", 5), config.get("giou_cost", 2)),
        # transformers weighs the focal class loss 1 in both models.
        loss_weights=(1.0, config.get("bbox_loss_coefficient", 5), config.get("giou_loss_coefficient", 2)),
        focal_alpha=float(config.get("focal_alpha", 0.25)),
        assign_second_stage=bool(config.get("assign_second_stage", False)) and deta and two_stage,
        criterion_num_queries=int(config["num_queries"]),
    )
    family = "deta" if deta else "deformable_detr"
    converted = ConvertedModel(family, module, f"{path} (transformers {config['model_type']})")
    return converted, hf_deformable_rules(backbone_rules, num_backbone_levels, refine)


def _detr(config: dict[str, Any], path: Path) -> tuple[ConvertedModel, list[Rule]]:
    backbone, backbone_rules, _ = _backbone(
        config, path, r"model\.backbone\.conv_encoder\.model\.", deformable=False
    )
    _require(
        config.get("activation_function", "relu") == "relu",
        path,
        "only ReLU feed-forward blocks are supported",
    )
    position = config.get("position_embedding_type", "sine")
    _require(position in ("sine", "learned"), path, f"position_embedding_type={position!r} is not supported")
    detector = {
        "_target_": "detrlab.models.detr.DETR",
        "backbone": backbone,
        "num_classes": _num_labels(config),
        "num_queries": int(config["num_queries"]),
        **_transformer_sizes(config, path),
        "position_encoding": position,
        "aux_loss": bool(config.get("auxiliary_loss", False)),
        "normalize_before": False,
    }
    module = detr_module_config(
        detector,
        costs=(config.get("class_cost", 1), config.get("bbox_cost", 5), config.get("giou_cost", 2)),
        loss_weights=(1.0, config.get("bbox_loss_coefficient", 5), config.get("giou_loss_coefficient", 2)),
        eos_coef=float(config.get("eos_coefficient", 0.1)),
    )
    return ConvertedModel("detr", module, f"{path} (transformers detr)"), hf_detr_rules(backbone_rules)


def read_hf_directory(path: Path) -> tuple[ConvertedModel, list[Rule], dict[str, Tensor]]:
    """Model description, key rules and raw weights of a ``save_pretrained`` directory."""
    config = json.loads((path / "config.json").read_text())
    model_type = config.get("model_type")
    _require(
        model_type in SUPPORTED_MODEL_TYPES,
        path,
        f"model_type={model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}",
    )
    if model_type == "detr":
        converted, rules = _detr(config, path)
    else:
        converted, rules = _deformable(config, path, deta=model_type == "deta")
    id2label = config.get("id2label") or {}
    if len(id2label) == converted.detector_config["num_classes"]:
        converted.class_names = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]
    return converted, rules, _load_weights(path)
