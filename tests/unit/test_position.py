"""Tests of the sine and learned 2-D positional encodings."""

from __future__ import annotations

import math

import pytest
import torch

from detrlab.models.position import PositionEmbeddingLearned, PositionEmbeddingSine, build_position_encoding


def test_sine_hand_checked_values_unnormalized():
    enc = PositionEmbeddingSine(num_pos_feats=4, temperature=10000, normalize=False)
    mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    out = enc(mask)
    assert out.shape == (1, 8, 2, 3)
    # Positions are 1-based: y = row + 1, x = col + 1. Frequencies for n=4: 1/T^0, 1/T^0, 1/T^0.5, 1/T^0.5.
    y = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    expected = torch.stack(
        [
            y.sin(),
            y.cos(),
            (y / 100).sin(),
            (y / 100).cos(),
            x.sin(),
            x.cos(),
            (x / 100).sin(),
            (x / 100).cos(),
        ]
    )
    torch.testing.assert_close(out[0], expected)
    # One value spelled out: x channel "sin, low frequency" at row 1, column 2.
    assert out[0, 6, 1, 2].item() == pytest.approx(math.sin(3 / 100))


def test_sine_normalization_uses_valid_extent_only():
    enc = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    mask = torch.ones(1, 3, 5, dtype=torch.bool)
    mask[0, :2, :3] = False  # a 2x3 image padded to 3x5
    out = enc(mask)
    # Valid x positions 1, 2, 3 are divided by the valid width 3 (not 5): x = 2*pi/3, 4*pi/3, 2*pi.
    assert out[0, 4, 0, 0].item() == pytest.approx(math.sin(2 * math.pi / 3), abs=1e-5)
    assert out[0, 4, 1, 1].item() == pytest.approx(math.sin(4 * math.pi / 3), abs=1e-5)
    # Valid y positions 1, 2 over height 2: y = pi, 2*pi.
    assert out[0, 1, 0, 2].item() == pytest.approx(math.cos(math.pi), abs=1e-5)
    # The padding does not change the encoding of the valid region.
    unpadded = enc(torch.zeros(1, 2, 3, dtype=torch.bool))
    torch.testing.assert_close(out[..., :2, :3], unpadded)


def test_sine_padding_independent_per_image_in_batch():
    enc = PositionEmbeddingSine(num_pos_feats=8)
    mask = torch.zeros(2, 6, 7, dtype=torch.bool)
    mask[1, 4:, :] = True
    mask[1, :, 5:] = True
    out = enc(mask)
    torch.testing.assert_close(out[1, :, :4, :5], enc(torch.zeros(1, 4, 5, dtype=torch.bool))[0])
    torch.testing.assert_close(out[0], enc(torch.zeros(1, 6, 7, dtype=torch.bool))[0])


def test_sine_offset_centres_positions():
    enc = PositionEmbeddingSine(num_pos_feats=2, normalize=True, offset=-0.5)
    out = enc(torch.zeros(1, 1, 3, dtype=torch.bool))
    # x = (col + 1 - 0.5) / 3 * 2*pi = pi/3, pi, 5*pi/3.
    expected = torch.tensor([math.pi / 3, math.pi, 5 * math.pi / 3]).sin()
    torch.testing.assert_close(out[0, 2, 0], expected)


def test_sine_output_channels_and_odd_features_rejected():
    out = PositionEmbeddingSine(num_pos_feats=128)(torch.zeros(2, 5, 4, dtype=torch.bool))
    assert out.shape == (2, 256, 5, 4)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="even"):
        PositionEmbeddingSine(num_pos_feats=3)


def test_sine_matches_transformers_detr():
    modeling_detr = pytest.importorskip("transformers.models.detr.modeling_detr")
    oracle = modeling_detr.DetrSinePositionEmbedding(embedding_dim=16, normalize=True)
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:] = True
    mask[1, :, 4:] = True
    ours = PositionEmbeddingSine(num_pos_feats=16, normalize=True)(mask)
    # The oracle takes a mask that is True on *valid* pixels.
    theirs = oracle(torch.zeros(2, 3, 5, 7), (~mask).long())
    torch.testing.assert_close(ours, theirs)


def test_learned_shape_and_layout():
    enc = PositionEmbeddingLearned(num_pos_feats=6, max_size=10)
    out = enc(torch.zeros(2, 4, 5, dtype=torch.bool))
    assert out.shape == (2, 12, 4, 5)
    # Column (x) features first, then row (y) features.
    torch.testing.assert_close(out[1, :6, 3, 2], enc.col_embed.weight[2])
    torch.testing.assert_close(out[0, 6:, 3, 2], enc.row_embed.weight[3])
    out.sum().backward()
    assert enc.row_embed.weight.grad is not None


def test_learned_too_large_feature_map():
    enc = PositionEmbeddingLearned(num_pos_feats=4, max_size=8)
    with pytest.raises(ValueError, match="max_size"):
        enc(torch.zeros(1, 9, 3, dtype=torch.bool))


def test_build_position_encoding():
    assert isinstance(build_position_encoding("sine", 64), PositionEmbeddingSine)
    learned = build_position_encoding("learned", 64)
    assert isinstance(learned, PositionEmbeddingLearned)
    assert learned.row_embed.weight.shape[1] == 64
    with pytest.raises(ValueError, match="'sine' or 'learned'"):
        build_position_encoding("rope", 64)
