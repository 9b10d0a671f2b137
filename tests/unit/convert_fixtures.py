"""Tiny random transformers detectors and their original-repository state dicts, for the conversion tests.

``hf_to_original`` applies the published key renaming (original -> transformers) in reverse: it is
written independently of ``detrlab.convert`` so that the two cannot share a mistake.
"""

from __future__ import annotations

import argparse
import re

import torch
from torch import Tensor

transformers = __import__("transformers")
deta_modeling = __import__(
    "transformers.models.deprecated.deta.modeling_deta", fromlist=["DetaForObjectDetection"]
)

SIZES = dict(
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    dropout=0.0,
    auxiliary_loss=True,
)


def resnet_config(out_features: list[str]) -> transformers.ResNetConfig:
    """A bottleneck ResNet with reduced widths (stem 8, stages 16/16/32/32, one block each)."""
    return transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[16, 16, 32, 32],
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        out_features=out_features,
    )


def swin_config(out_features: list[str]) -> transformers.SwinConfig:
    """A small Swin (embed 16, depths 1-1-2-1, heads 1-1-2-2, window 2, 64 px pretraining layout)."""
    return transformers.SwinConfig(
        embed_dim=16,
        depths=[1, 1, 2, 1],
        num_heads=[1, 1, 2, 2],
        window_size=2,
        image_size=64,
        drop_path_rate=0.0,
        out_features=out_features,
    )


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (heads, sampling offsets, BatchNorm statistics)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            else:
                tensor.add_(noise * 0.05)


def make_hf_model(kind: str, num_labels: int = 5, seed: int = 0) -> torch.nn.Module:
    """``kind``: deta | deformable | deformable_two_stage | detr (eval mode, random weights)."""
    torch.manual_seed(seed)
    if kind in ("deta", "deta_swin"):
        backbone = (
            swin_config(["stage2", "stage3", "stage4"])
            if kind == "deta_swin"
            else resnet_config(["stage2", "stage3", "stage4"])
        )
        config = deta_modeling.DetaConfig(
            backbone_config=backbone,
            num_queries=12,
            two_stage_num_proposals=12,
            num_labels=num_labels,
            assign_first_stage=True,
            assign_second_stage=True,
            **SIZES,
        )
        model = deta_modeling.DetaForObjectDetection(config)
    elif kind.startswith("deformable"):
        two_stage = kind == "deformable_two_stage"
        config = transformers.DeformableDetrConfig(
            use_timm_backbone=False,
            backbone=None,
            use_pretrained_backbone=False,
            backbone_config=resnet_config(["stage2", "stage3", "stage4"]),
            num_queries=12,
            two_stage_num_proposals=12,
            two_stage=two_stage,
            with_box_refine=two_stage,
            num_labels=num_labels,
            disable_custom_kernels=True,
            **SIZES,
        )
        model = transformers.DeformableDetrForObjectDetection(config)
    elif kind == "detr":
        # With auxiliary_loss=True transformers' DETR decoder feeds each layer the *normalized* output
        # of the previous one, unlike the original DETR (and ours); without it the two agree.
        config = transformers.DetrConfig(
            use_timm_backbone=False,
            backbone=None,
            use_pretrained_backbone=False,
            backbone_config=resnet_config(["stage4"]),
            num_queries=12,
            num_labels=num_labels,
            **(SIZES | {"auxiliary_loss": False}),
        )
        model = transformers.DetrForObjectDetection(config)
    else:
        raise ValueError(kind)
    _randomize(model, seed)
    return model.eval()


# --- original key format, from the published original -> transformers rules, reversed -------------

_RESNET = [
    (r"embedder\.embedder\.convolution\.", "conv1."),
    (r"embedder\.embedder\.normalization\.", "bn1."),
]


def _resnet_to_original(rest: str) -> str:
    for pattern, repl in _RESNET:
        if re.match(pattern, rest):
            return re.sub(pattern, repl, rest)
    m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", rest)
    stage, block, tail = int(m[1]), m[2], m[3]
    tail = re.sub(r"^shortcut\.convolution\.", "downsample.0.", tail)
    tail = re.sub(r"^shortcut\.normalization\.", "downsample.1.", tail)
    tail = re.sub(r"^layer\.(\d)\.convolution\.", lambda t: f"conv{int(t[1]) + 1}.", tail)
    tail = re.sub(r"^layer\.(\d)\.normalization\.", lambda t: f"bn{int(t[1]) + 1}.", tail)
    return f"layer{stage + 1}.{block}.{tail}"


_DEFORMABLE_LAYER = {
    "encoder": [
        ("self_attn_layer_norm", "norm1"),
        ("fc1", "linear1"),
        ("fc2", "linear2"),
        ("final_layer_norm", "norm2"),
    ],
    "decoder": [
        ("encoder_attn_layer_norm", "norm1"),
        ("encoder_attn.", "cross_attn."),
        ("self_attn_layer_norm", "norm2"),
        ("fc1", "linear1"),
        ("fc2", "linear2"),
        ("final_layer_norm", "norm3"),
    ],
}
_DETR_LAYER = {
    "encoder": [
        ("self_attn_layer_norm", "norm1"),
        ("fc1", "linear1"),
        ("fc2", "linear2"),
        ("final_layer_norm", "norm2"),
    ],
    "decoder": [
        ("encoder_attn_layer_norm", "norm2"),
        ("encoder_attn.", "multihead_attn."),
        ("self_attn_layer_norm", "norm1"),
        ("fc1", "linear1"),
        ("fc2", "linear2"),
        ("final_layer_norm", "norm3"),
    ],
}


def _merge_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Separate q/k/v projections -> ``nn.MultiheadAttention`` ``in_proj_{weight,bias}``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"(.*)\.q_proj\.(weight|bias)", key)
        if m:
            parts = [state[f"{m[1]}.{p}_proj.{m[2]}"] for p in "qkv"]
            out[f"{m[1]}.in_proj_{m[2]}"] = torch.cat(parts, 0)
        elif not re.fullmatch(r".*\.[kv]_proj\.(weight|bias)", key):
            out[key] = value
    return out


_SWIN_BLOCK = [
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.self.relative_position_index", "attn.relative_position_index"),
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
]


def _swin_backbone_to_original(backbone: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers SwinBackbone names -> the Swin repository's detection backbone names."""
    out = {}
    for key, value in backbone.items():
        if m := re.match(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.query\.(\w+)", key):
            parts = [backbone[key.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
            out[f"layers.{m[1]}.blocks.{m[2]}.attn.qkv.{m[3]}"] = torch.cat(parts)
        elif re.match(r".*attention\.self\.(key|value)\.", key):
            continue
        elif m := re.match(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.*)", key):
            rest = m[3]
            for theirs, original in _SWIN_BLOCK:
                if rest.startswith(theirs):
                    rest = original + rest[len(theirs) :]
                    break
            out[f"layers.{m[1]}.blocks.{m[2]}.{rest}"] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.downsample\.(.*)", key):
            out[f"layers.{m[1]}.downsample.{m[2]}"] = value
        elif m := re.match(r"hidden_states_norms\.stage(\d)\.(.*)", key):
            out[f"norm{int(m[1]) - 1}.{m[2]}"] = value  # output index i = stage i + 1
        else:
            out[
                key.replace("embeddings.patch_embeddings.projection.", "patch_embed.proj.").replace(
                    "embeddings.norm.", "patch_embed.norm."
                )
            ] = value
    return out


def hf_to_original(state: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """Rename a transformers state dict into the original repository's format (``checkpoint['model']``)."""
    backbone = "model.backbone.model." if family == "deta" else "model.backbone.conv_encoder.model."
    layer_rules = _DETR_LAYER if family == "detr" else _DEFORMABLE_LAYER
    out = {}
    backbone_state = {k[len(backbone) :]: v for k, v in state.items() if k.startswith(backbone)}
    if any(k.startswith("embeddings.patch_embeddings") for k in backbone_state):
        out.update({"backbone.0.body." + k: v for k, v in _swin_backbone_to_original(backbone_state).items()})
        state = {k: v for k, v in state.items() if not k.startswith(backbone)}
    for key, value in _merge_qkv(dict(state)).items():
        if key.startswith(backbone):
            new = "backbone.0.body." + _resnet_to_original(key[len(backbone) :])
        elif m := re.match(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.*)", key):
            rest = m[3]
            for hf_name, original in layer_rules[m[1]]:
                if rest.startswith(hf_name):
                    rest = original + rest[len(hf_name) :]
                    break
            new = f"transformer.{m[1]}.layers.{m[2]}.{rest}"
        elif key.startswith(("model.decoder.class_embed", "model.decoder.bbox_embed")):
            new = "transformer." + key[len("model.") :]
        elif family == "detr":
            new = {
                "model.input_projection.weight": "input_proj.weight",
                "model.input_projection.bias": "input_proj.bias",
                "model.query_position_embeddings.weight": "query_embed.weight",
                "model.decoder.layernorm.weight": "transformer.decoder.norm.weight",
                "model.decoder.layernorm.bias": "transformer.decoder.norm.bias",
            }.get(key) or re.sub(
                r"^class_labels_classifier", "class_embed", re.sub(r"^bbox_predictor", "bbox_embed", key)
            )
        elif key.startswith("model.input_proj"):
            new = key[len("model.") :]
        elif key == "model.query_position_embeddings.weight":
            new = "query_embed.weight"
        elif key.startswith(
            (
                "model.level_embed",
                "model.reference_points",
                "model.enc_output",
                "model.pos_trans",
                "model.pix_trans",
            )
        ):
            new = "transformer." + key[len("model.") :]
        else:
            new = key
        out[new] = value
    return out


def original_args(model: torch.nn.Module, family: str) -> argparse.Namespace:
    """The ``args`` an original training run would store for ``model``'s configuration."""
    c = model.config
    args = dict(
        hidden_dim=c.d_model,
        nheads=c.encoder_attention_heads,
        enc_layers=c.encoder_layers,
        dec_layers=c.decoder_layers,
        dim_feedforward=c.encoder_ffn_dim,
        dropout=c.dropout,
        num_queries=c.num_queries,
        aux_loss=True,
        set_cost_class=c.class_cost,
        set_cost_bbox=c.bbox_cost,
        set_cost_giou=c.giou_cost,
        bbox_loss_coef=c.bbox_loss_coefficient,
        giou_loss_coef=c.giou_loss_coefficient,
    )
    if family != "detr":
        args.update(
            num_feature_levels=c.num_feature_levels,
            enc_n_points=c.encoder_n_points,
            dec_n_points=c.decoder_n_points,
            two_stage=c.two_stage,
            with_box_refine=c.with_box_refine,
            num_queries=c.two_stage_num_proposals if c.two_stage else c.num_queries,
            cls_loss_coef=1.0,
            focal_alpha=c.focal_alpha,
        )
    if family == "deta":
        args.update(assign_first_stage=c.assign_first_stage, assign_second_stage=c.assign_second_stage)
    return argparse.Namespace(**args)
