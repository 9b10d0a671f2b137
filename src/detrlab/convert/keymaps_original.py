"""Key maps from the original repositories' checkpoints (``checkpoint['model']``) to our detectors.

Deformable DETR and DETA share their names; DETR names its cross-attention ``multihead_attn`` and
keeps ``nn.MultiheadAttention`` everywhere. Backbones are torchvision ResNets under ``backbone.0.body``.
"""

from __future__ import annotations

from detrlab.convert.keymap import Rule
from detrlab.convert.keymaps_backbone import original_swin_rules, torchvision_resnet_rules
from detrlab.convert.keymaps_heads import deformable_head_rules, input_projection_rule

__all__ = ["original_deformable_rules", "original_detr_rules"]

_ENC = r"transformer\.encoder\.layers\.(\d+)\."
_DEC = r"transformer\.decoder\.layers\.(\d+)\."
_BACKBONE = r"backbone\.0\.body\."


def original_deformable_rules(
    num_backbone_levels: int, with_box_refine: bool, swin_stages: list[int] | None = None
) -> list[Rule]:
    """fundamentalvision/Deformable-DETR and jozhang97/DETA (ResNet, or with ``swin_stages`` Swin backbones)."""
    enc, dec = "transformer.encoder.layers.\\1.", "transformer.decoder.layers.\\1."
    backbone = (
        torchvision_resnet_rules(_BACKBONE)
        if swin_stages is None
        else original_swin_rules(_BACKBONE, swin_stages)
    )
    return [
        *backbone,
        input_projection_rule("", num_backbone_levels),
        Rule(r"transformer\.level_embed", "transformer.level_embed"),
        Rule(_ENC + r"self_attn\.(\w+)\.(\w+)", enc + r"self_attn.\2.\3"),
        Rule(_ENC + r"norm1\.(\w+)", enc + r"norm.\2"),
        Rule(_ENC + r"linear([12])\.(\w+)", enc + r"ffn.linear\2.\3"),
        Rule(_ENC + r"norm2\.(\w+)", enc + r"ffn.norm.\2"),
        Rule(_DEC + r"cross_attn\.(\w+)\.(\w+)", dec + r"cross_attn.\2.\3"),
        Rule(_DEC + r"norm1\.(\w+)", dec + r"cross_attn_norm.\2"),
        Rule(_DEC + r"self_attn\.(in_proj_weight|in_proj_bias)", dec + r"self_attn.\2"),
        Rule(_DEC + r"self_attn\.out_proj\.(\w+)", dec + r"self_attn.out_proj.\2"),
        Rule(_DEC + r"norm2\.(\w+)", dec + r"self_attn_norm.\2"),
        Rule(_DEC + r"linear([12])\.(\w+)", dec + r"ffn.linear\2.\3"),
        Rule(_DEC + r"norm3\.(\w+)", dec + r"ffn.norm.\2"),
        Rule(r"query_embed\.weight", "transformer.query_embed.weight"),
        Rule(r"transformer\.reference_points\.(\w+)", r"transformer.reference_points.\1"),
        Rule(
            r"transformer\.(enc_output|enc_output_norm|pos_trans|pos_trans_norm|pix_trans|pix_trans_norm)\.(\w+)",
            r"transformer.\1.\2",
        ),
        *deformable_head_rules(r"transformer\.decoder\.", with_box_refine),
    ]


def original_detr_rules() -> list[Rule]:
    """facebookresearch/detr (detection checkpoints; segmentation heads are not part of our DETR)."""
    dec = "transformer.decoder.layers.\\1."
    return [
        *torchvision_resnet_rules(_BACKBONE),
        Rule(r"backbone\.1\.(row_embed|col_embed)\.weight", r"position_encoding.\1.weight"),
        Rule(r"(input_proj|query_embed|class_embed)\.(\w+)", r"\1.\2"),
        Rule(r"bbox_embed\.layers\.(\d)\.(\w+)", lambda m: f"bbox_embed.{3 * int(m[1])}.{m[2]}"),
        Rule(
            _ENC + r"(self_attn\.\w+|self_attn\.out_proj\.\w+|norm[12]\.\w+)",
            r"transformer.encoder.layers.\1.\2",
        ),
        Rule(_ENC + r"linear([12])\.(\w+)", r"transformer.encoder.layers.\1.ffn.linear\2.\3"),
        Rule(_DEC + r"(self_attn\.\w+|self_attn\.out_proj\.\w+|norm[123]\.\w+)", dec + r"\2"),
        Rule(_DEC + r"multihead_attn\.(\w+|out_proj\.\w+)", dec + r"cross_attn.\2"),
        Rule(_DEC + r"linear([12])\.(\w+)", dec + r"ffn.linear\2.\3"),
        Rule(r"transformer\.(encoder|decoder)\.norm\.(\w+)", r"transformer.\1.norm.\2"),
    ]
