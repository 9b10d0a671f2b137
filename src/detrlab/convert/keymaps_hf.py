"""Key maps from transformers ``DetaForObjectDetection`` / ``DeformableDetrForObjectDetection`` /
``DetrForObjectDetection`` state dicts to our detectors."""

from __future__ import annotations

from detrlab.convert.keymap import Rule
from detrlab.convert.keymaps_heads import deformable_head_rules, input_projection_rule

__all__ = ["hf_deformable_rules", "hf_detr_rules", "split_projection_rules"]

_ENC = r"model\.encoder\.layers\.(\d+)\."
_DEC = r"model\.decoder\.layers\.(\d+)\."


def split_projection_rules(foreign: str, ours: str) -> list[Rule]:
    """Separate ``{foreign}.{q,k,v}_proj`` + ``out_proj`` -> our ``nn.MultiheadAttention`` ``{ours}``.

    ``foreign`` is a regex with one group (the layer index), ``ours`` the replacement using ``\\1``.
    """
    rules = [
        Rule(rf"{foreign}{name}_proj\.(weight|bias)", rf"{ours}in_proj_\2", part=part)
        for part, name in enumerate("qkv")
    ]
    return [*rules, Rule(rf"{foreign}out_proj\.(\w+)", rf"{ours}out_proj.\2")]


def hf_deformable_rules(backbone: list[Rule], num_backbone_levels: int, with_box_refine: bool) -> list[Rule]:
    """DETA and Deformable DETR (their transformer names are the same; only the backbone prefix differs)."""
    enc, dec = "transformer.encoder.layers.\\1.", "transformer.decoder.layers.\\1."
    return [
        *backbone,
        input_projection_rule(r"model\.", num_backbone_levels),
        Rule(r"model\.level_embed", "transformer.level_embed"),
        Rule(
            _ENC + r"self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(\w+)",
            enc + r"self_attn.\2.\3",
        ),
        Rule(_ENC + r"self_attn_layer_norm\.(\w+)", enc + r"norm.\2"),
        Rule(_ENC + r"fc([12])\.(\w+)", enc + r"ffn.linear\2.\3"),
        Rule(_ENC + r"final_layer_norm\.(\w+)", enc + r"ffn.norm.\2"),
        *split_projection_rules(_DEC + r"self_attn\.", dec + "self_attn."),
        Rule(_DEC + r"self_attn_layer_norm\.(\w+)", dec + r"self_attn_norm.\2"),
        Rule(_DEC + r"encoder_attn\.(\w+)\.(\w+)", dec + r"cross_attn.\2.\3"),
        Rule(_DEC + r"encoder_attn_layer_norm\.(\w+)", dec + r"cross_attn_norm.\2"),
        Rule(_DEC + r"fc([12])\.(\w+)", dec + r"ffn.linear\2.\3"),
        Rule(_DEC + r"final_layer_norm\.(\w+)", dec + r"ffn.norm.\2"),
        # Learned queries: first half position, second half content, in both layouts.
        Rule(r"model\.query_position_embeddings\.weight", "transformer.query_embed.weight"),
        Rule(r"model\.reference_points\.(\w+)", r"transformer.reference_points.\1"),
        Rule(
            r"model\.(enc_output|enc_output_norm|pos_trans|pos_trans_norm|pix_trans|pix_trans_norm)\.(\w+)",
            r"transformer.\1.\2",
        ),
        *deformable_head_rules(r"model\.decoder\.", with_box_refine),
    ]


def hf_detr_rules(backbone: list[Rule]) -> list[Rule]:
    """DETR: post-norm encoder / decoder with separate q/k/v projections, a final decoder LayerNorm."""
    enc, dec = "transformer.encoder.layers.\\1.", "transformer.decoder.layers.\\1."
    return [
        *backbone,
        Rule(
            r"model\.backbone\.position_embedding\.row_embeddings\.weight",
            "position_encoding.row_embed.weight",
        ),
        Rule(
            r"model\.backbone\.position_embedding\.column_embeddings\.weight",
            "position_encoding.col_embed.weight",
        ),
        Rule(r"model\.input_projection\.(\w+)", r"input_proj.\1"),
        Rule(r"model\.query_position_embeddings\.weight", "query_embed.weight"),
        *split_projection_rules(_ENC + r"self_attn\.", enc + "self_attn."),
        Rule(_ENC + r"self_attn_layer_norm\.(\w+)", enc + r"norm1.\2"),
        Rule(_ENC + r"fc([12])\.(\w+)", enc + r"ffn.linear\2.\3"),
        Rule(_ENC + r"final_layer_norm\.(\w+)", enc + r"norm2.\2"),
        *split_projection_rules(_DEC + r"self_attn\.", dec + "self_attn."),
        Rule(_DEC + r"self_attn_layer_norm\.(\w+)", dec + r"norm1.\2"),
        *split_projection_rules(_DEC + r"encoder_attn\.", dec + "cross_attn."),
        Rule(_DEC + r"encoder_attn_layer_norm\.(\w+)", dec + r"norm2.\2"),
        Rule(_DEC + r"fc([12])\.(\w+)", dec + r"ffn.linear\2.\3"),
        Rule(_DEC + r"final_layer_norm\.(\w+)", dec + r"norm3.\2"),
        Rule(r"model\.decoder\.layernorm\.(\w+)", r"transformer.decoder.norm.\1"),
        Rule(r"class_labels_classifier\.(\w+)", r"class_embed.\1"),
        Rule(r"bbox_predictor\.layers\.(\d)\.(\w+)", lambda m: f"bbox_embed.{3 * int(m[1])}.{m[2]}"),
    ]
