"""DETA numerics equal the transformers 4.57 reference (deprecated ``modeling_deta``) with the same weights.

Both models share our backbone and position encodings (the reference's backbone is replaced by a thin
adapter), so the comparison covers input projections, encoder, two-stage proposals with NMS
selection, ``pix_trans``, refinement and heads.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from detrlab.models.backbone import ResNetBackbone
from detrlab.models.deformable_detr import DETA
from tests.kernels import ATTENTION_PATHS, attention_path

deta_ref = pytest.importorskip("transformers.models.deprecated.deta.modeling_deta")
transformers = pytest.importorskip("transformers")

SIZES = dict(
    hidden_dim=32, nheads=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, num_queries=12
)


class _SharedBackbone(nn.Module):
    """Presents our backbone + positions with the reference's interface (its masks are True on valid pixels)."""

    def __init__(self, ours: DETA) -> None:
        super().__init__()
        self.ours = ours

    def position_embedding(self, source, valid_mask):
        return self.ours.position_encoding(~valid_mask).to(source.dtype)

    def forward(self, pixel_values, pixel_mask):
        feats = self.ours.backbone(pixel_values, ~pixel_mask.bool())
        features = [(f, ~m) for f, m in feats]
        return features, [self.position_embedding(f, m) for f, m in features]


def _reference_key(key: str, num_backbone_levels: int) -> str | None:
    if key.startswith("backbone."):
        return None
    key = re.sub(r"^input_proj\.lateral\.(\d+)", r"model.input_proj.\1", key)
    key = re.sub(
        r"^input_proj\.extra\.(\d+)",
        lambda m: f"model.input_proj.{int(m.group(1)) + num_backbone_levels}",
        key,
    )
    key = key.replace("transformer.", "model.")
    key = re.sub(r"(bbox_embed\.\d+)\.(\d+)\.", lambda m: f"{m.group(1)}.layers.{int(m.group(2)) // 3}.", key)
    for ours, theirs in [
        ("ffn.linear1", "fc1"),
        ("ffn.linear2", "fc2"),
        ("ffn.norm", "final_layer_norm"),
        ("cross_attn_norm", "encoder_attn_layer_norm"),
        ("cross_attn.", "encoder_attn."),
        ("self_attn_norm", "self_attn_layer_norm"),
    ]:
        key = key.replace(ours, theirs)
    return re.sub(r"(encoder\.layers\.\d+)\.norm\.", r"\1.self_attn_layer_norm.", key)


def _reference_state(ours: DETA) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in ours.state_dict().items():
        ref_key = _reference_key(key, ours.input_proj.num_backbone_levels)
        if ref_key is None:
            continue
        if ref_key.endswith("self_attn.in_proj_weight") or ref_key.endswith("self_attn.in_proj_bias"):
            kind = ref_key.rsplit("_", 1)[-1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                state[ref_key.replace(f"in_proj_{kind}", f"{name}.{kind}")] = part
        else:
            state[ref_key] = value
            if ref_key.startswith(("class_embed.", "bbox_embed.")):
                state[f"model.decoder.{ref_key}"] = value
    return state


@pytest.mark.parametrize("implementation", ATTENTION_PATHS)
@pytest.mark.parametrize("num_levels", [4, 5])
def test_deta_matches_reference_outputs(num_levels, implementation):
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet_small", return_stages=[2, 3, 4], stage_widths=[8, 16, 32, 32])
    ours = DETA(
        backbone,
        num_classes=4,
        num_feature_levels=num_levels,
        assign_first_stage=True,
        attention_implementation=implementation,
        **SIZES,
    )
    # non-trivial class/box heads and sampling offsets
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours.eval()

    config = deta_ref.DetaConfig(
        # only its channel counts matter (the module is replaced): those of our small backbone
        backbone_config=transformers.ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 16, 32, 32],
            depths=[1, 1, 1, 1],
            layer_type="basic",
            out_features=["stage2", "stage3", "stage4"],
        ),
        num_queries=12,
        two_stage_num_proposals=12,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_labels=4,
        dropout=0.0,
        num_feature_levels=num_levels,
        auxiliary_loss=True,
        assign_first_stage=True,
    )
    reference = deta_ref.DetaForObjectDetection(config)
    reference.model.backbone = _SharedBackbone(ours)
    missing, unexpected = reference.load_state_dict(_reference_state(ours), strict=False)
    assert unexpected == [] and [k for k in missing if "backbone" not in k] == []
    reference.eval()

    # the reference's pre-NMS top-1000 needs at least 1000 encoder tokens
    images = torch.randn(2, 3, 256, 256)
    mask = torch.zeros(2, 256, 256, dtype=torch.bool)
    with torch.no_grad():
        with attention_path(implementation):
            out = ours(images, mask)
        ref = reference(pixel_values=images, pixel_mask=(~mask).long())

    torch.testing.assert_close(out["init_reference"], ref.init_reference_points, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["enc_outputs"]["pred_logits"], ref.enc_outputs_class, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out["enc_outputs"]["pred_boxes"], ref.enc_outputs_coord_logits.sigmoid(), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(out["pred_logits"], ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, atol=1e-5, rtol=1e-4)
