"""Tests of the DETR encoder-decoder transformer."""

from __future__ import annotations

import math

import pytest
import torch

from detrlab.models.position import PositionEmbeddingSine
from detrlab.models.transformer import Transformer

D, HEADS, FFN = 32, 4, 64


def _small(**kwargs) -> Transformer:
    args = dict(
        d_model=D, nhead=HEADS, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=FFN, dropout=0.0
    )
    return Transformer(**(args | kwargs)).eval()


def _inputs(b: int = 2, h: int = 4, w: int = 5, q: int = 7):
    torch.manual_seed(0)
    src = torch.randn(b, D, h, w)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 3:] = True
    query = torch.randn(q, D)
    pos = PositionEmbeddingSine(D // 2)(mask)
    return src, mask, query, pos


def test_output_shapes():
    src, mask, query, pos = _inputs()
    hs, memory = _small()(src, mask, query, pos)
    assert hs.shape == (3, 2, 7, D)
    assert memory.shape == (2, 4 * 5, D)


def test_every_decoder_output_goes_through_the_final_norm():
    src, mask, query, pos = _inputs()
    hs, _ = _small()(src, mask, query, pos)
    # A fresh LayerNorm (weight 1, bias 0) gives zero mean and unit variance on every output vector.
    torch.testing.assert_close(hs.mean(-1), torch.zeros(hs.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(hs.var(-1, unbiased=False), torch.ones(hs.shape[:-1]), atol=1e-3, rtol=0)


def test_key_padding_is_respected():
    model = _small()
    src, mask, query, pos = _inputs()
    hs, memory = model(src, mask, query, pos)

    # Changing features and positions at padded cells must not change anything at valid cells.
    src2, pos2 = src.clone(), pos.clone()
    pad = mask[:, None].expand_as(src)
    src2[pad] = 100.0 * torch.randn(int(pad.sum()))
    pos2[pad] = -50.0
    hs2, memory2 = model(src2, mask, query, pos2)
    torch.testing.assert_close(hs2, hs)
    valid = ~mask.flatten(1)
    torch.testing.assert_close(memory2[valid], memory[valid])

    # Sanity check that the comparison can fail: changing a valid cell changes the output.
    src3 = src.clone()
    src3[1, :, 0, 0] += 1.0
    hs3, _ = model(src3, mask, query, pos)
    assert not torch.allclose(hs3[:, 1], hs[:, 1])
    torch.testing.assert_close(hs3[:, 0], hs[:, 0])


def test_pre_norm_variant():
    model = _small(normalize_before=True)
    assert model.encoder.norm is not None
    assert _small().encoder.norm is None
    src, mask, query, pos = _inputs()
    hs, memory = model(src, mask, query, pos)
    assert hs.shape == (3, 2, 7, D)
    assert torch.isfinite(memory).all()


def test_zero_encoder_layers_passes_features_through():
    model = _small(num_encoder_layers=0)
    src, mask, query, pos = _inputs()
    hs, memory = model(src, mask, query, pos)
    torch.testing.assert_close(memory, src.flatten(2).transpose(1, 2))
    assert hs.shape == (3, 2, 7, D)


def test_xavier_uniform_init():
    model = Transformer(
        d_model=D, nhead=HEADS, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=FFN
    )
    w = model.encoder.layers[0].ffn.linear1.weight  # [FFN, D]
    bound = math.sqrt(6.0 / (D + FFN))
    assert w.abs().max() <= bound
    # Uniform on [-bound, bound] has std bound / sqrt(3).
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 30, "nhead": 4}, "divisible"),
        ({"num_decoder_layers": 0}, "num_decoder_layers"),
        ({"activation": "swish"}, "unknown activation"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transformer(**kwargs)


def _copy_attention(theirs, ours) -> None:
    wq, wk, wv = ours.in_proj_weight.chunk(3)
    bq, bk, bv = ours.in_proj_bias.chunk(3)
    for proj, w, b in ((theirs.q_proj, wq, bq), (theirs.k_proj, wk, bk), (theirs.v_proj, wv, bv)):
        proj.weight.copy_(w)
        proj.bias.copy_(b)
    theirs.out_proj.load_state_dict(ours.out_proj.state_dict())


@torch.no_grad()
def test_matches_transformers_detr():
    modeling_detr = pytest.importorskip("transformers.models.detr.modeling_detr")
    from transformers import DetrConfig

    config = DetrConfig(
        d_model=D,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        # With auxiliary_loss the oracle feeds normalized states to the next layer; DETR does not.
        auxiliary_loss=False,
    )
    encoder = modeling_detr.DetrEncoder(config).eval()
    decoder = modeling_detr.DetrDecoder(config).eval()
    model = _small()
    for theirs, ours in zip(encoder.layers, model.encoder.layers):
        _copy_attention(theirs.self_attn, ours.self_attn)
        theirs.self_attn_layer_norm.load_state_dict(ours.norm1.state_dict())
        theirs.fc1.load_state_dict(ours.ffn.linear1.state_dict())
        theirs.fc2.load_state_dict(ours.ffn.linear2.state_dict())
        theirs.final_layer_norm.load_state_dict(ours.norm2.state_dict())
    for theirs, ours in zip(decoder.layers, model.decoder.layers):
        _copy_attention(theirs.self_attn, ours.self_attn)
        _copy_attention(theirs.encoder_attn, ours.cross_attn)
        theirs.self_attn_layer_norm.load_state_dict(ours.norm1.state_dict())
        theirs.encoder_attn_layer_norm.load_state_dict(ours.norm2.state_dict())
        theirs.fc1.load_state_dict(ours.ffn.linear1.state_dict())
        theirs.fc2.load_state_dict(ours.ffn.linear2.state_dict())
        theirs.final_layer_norm.load_state_dict(ours.norm3.state_dict())
    decoder.layernorm.load_state_dict(model.decoder.norm.state_dict())

    src, mask, query, pos = _inputs()
    hs, memory = model(src, mask, query, pos)

    flat_src = src.flatten(2).transpose(1, 2)
    flat_pos = pos.flatten(2).transpose(1, 2)
    valid = (~mask.flatten(1)).long()  # the oracle's masks are 1 on valid cells
    their_memory = encoder(inputs_embeds=flat_src, attention_mask=valid, object_queries=flat_pos)[0]
    out = decoder(
        inputs_embeds=torch.zeros(2, query.shape[0], D),
        encoder_hidden_states=their_memory,
        encoder_attention_mask=valid,
        object_queries=flat_pos,
        query_position_embeddings=query[None].expand(2, -1, -1),
        output_hidden_states=True,
        return_dict=True,
    )
    torch.testing.assert_close(memory, their_memory, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hs[-1], out.last_hidden_state, atol=1e-5, rtol=1e-5)
    # hidden_states[i] is the (un-normalized) input of layer i, i.e. the output of layer i - 1.
    for i in range(1, 3):
        torch.testing.assert_close(hs[i - 1], decoder.layernorm(out.hidden_states[i]), atol=1e-5, rtol=1e-5)
