"""Multi-scale deformable attention: exact sampling, gradients, dispatch, initialization."""

from __future__ import annotations

import math

import pytest
import torch

from detrlab.errors import AttentionImplementationError
from detrlab.models import deformable_attention as da
from detrlab.models.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_pytorch,
)

SHAPES = [(5, 7), (3, 4), (1, 2)]


def _bilinear_loop(value, shapes, locations, weights):
    """Independent reference: explicit bilinear interpolation (zero outside), pixel centres at i + 0.5."""
    b, _, heads, dh = value.shape
    _, q, _, _, points, _ = locations.shape
    out = torch.zeros(b, q, heads, dh, dtype=value.dtype)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for n in range(b):
        for i in range(q):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(points):
                        # continuous pixel coordinates: location 0 is the left edge, pixel j covers [j, j + 1)
                        x = locations[n, i, m, lvl, p, 0].item() * w - 0.5
                        y = locations[n, i, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(dh, dtype=value.dtype)
                        for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample += wy * wx * value[n, starts[lvl] + yy * w + xx, m]
                        out[n, i, m] += weights[n, i, m, lvl, p] * sample
    return out.flatten(2)


def _inputs(dtype=torch.float64, b=2, q=3, heads=2, dh=3, points=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(b, s, heads, dh, generator=g, dtype=dtype)
    # Some locations fall outside [0, 1] to exercise the zero padding.
    locations = torch.rand(b, q, heads, len(SHAPES), points, 2, generator=g, dtype=dtype) * 1.3 - 0.15
    weights = torch.rand(b, q, heads, len(SHAPES), points, generator=g, dtype=dtype)
    return value, locations, weights


def test_grid_sample_path_matches_explicit_bilinear_loop_in_float64():
    value, locations, weights = _inputs()
    got = multi_scale_deformable_attention_pytorch(value, SHAPES, locations, weights)
    expected = _bilinear_loop(value, SHAPES, locations, weights)
    assert got.shape == (2, 3, 6)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_sampling_a_pixel_centre_returns_that_pixel():
    value = torch.arange(12, dtype=torch.float64).view(1, 12, 1, 1)  # one 3x4 level
    # centre of pixel (row 1, col 2) is ((2 + 0.5) / 4, (1 + 0.5) / 3)
    loc = torch.tensor([2.5 / 4, 1.5 / 3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = multi_scale_deformable_attention_pytorch(
        value, [(3, 4)], loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    )
    assert out.item() == pytest.approx(6.0)
    # halfway between columns 2 and 3 of row 1: (6 + 7) / 2
    loc[..., 0] = 3.0 / 4
    out = multi_scale_deformable_attention_pytorch(
        value, [(3, 4)], loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    )
    assert out.item() == pytest.approx(6.5)


def test_gradcheck_value_locations_and_weights():
    value, locations, weights = _inputs(b=1, q=2, heads=2, dh=2, points=2, seed=1)
    # random locations almost surely avoid pixel-centre lines, where bilinear sampling has kinks
    inputs = tuple(t.clone().requires_grad_(True) for t in (value, locations, weights))
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention_pytorch(v, SHAPES, loc, w),
        inputs,
        eps=1e-6,
        atol=1e-6,
    )


def test_dispatch_uses_registered_kernel_only_on_its_devices():
    value, locations, weights = _inputs(dtype=torch.float32)
    calls = []

    def fake_kernel(v, shapes, start, loc, w, step):
        calls.append((shapes.tolist(), start.tolist(), step))
        return multi_scale_deformable_attention_pytorch(v, [tuple(s) for s in shapes.tolist()], loc, w)

    saved = dict(da._compiled)  # restored below so later tests see the real extension again
    da.register_compiled_kernel(fake_kernel, devices=("cuda",))
    try:
        auto = multi_scale_deformable_attention(value, SHAPES, locations, weights, "auto")
        assert calls == []  # CPU tensors, kernel only for CUDA: "auto" keeps PyTorch
        # forcing a kernel the tensors' device does not have is a config error naming both
        with pytest.raises(AttentionImplementationError, match=r"'compiled'.*cpu tensors.*cuda only"):
            multi_scale_deformable_attention(value, SHAPES, locations, weights, "compiled")
        da.register_compiled_kernel(fake_kernel, devices=("cpu", "cuda"))
        forced = multi_scale_deformable_attention(
            value, SHAPES, locations, weights, "compiled", im2col_step=8
        )
        assert calls == [([[5, 7], [3, 4], [1, 2]], [0, 35, 47], 8)]
        torch.testing.assert_close(forced, auto)
        multi_scale_deformable_attention(value, SHAPES, locations, weights, "auto")
        assert len(calls) == 2  # a kernel for CPU: "auto" uses it
        assert multi_scale_deformable_attention(value, SHAPES, locations, weights, "pytorch") is not None
        assert len(calls) == 2
        da.register_compiled_kernel(None)
        with pytest.raises(AttentionImplementationError, match="no compiled deformable-attention kernel"):
            multi_scale_deformable_attention(value, SHAPES, locations, weights, "compiled")
    finally:
        da._compiled.clear()
        da._compiled.update(saved)


def test_bfloat16_inputs_are_sampled_in_float32_and_returned_in_bfloat16():
    value, locations, weights = _inputs(dtype=torch.float32)
    out = multi_scale_deformable_attention(value.bfloat16(), SHAPES, locations.bfloat16(), weights.bfloat16())
    assert out.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, multi_scale_deformable_attention_pytorch(value, SHAPES, locations, weights)
    )


def test_module_initialization_and_reference_box_scaling():
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=4, num_levels=2, num_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points along +x, head 1 along +y (angles 0, pi/2), k-th point k cells out, same on every level
    torch.testing.assert_close(bias[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bias[1, 0, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    assert bias[1, 0, :, 0].abs().max() < 1e-6
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.sampling_offsets.weight.abs().sum() == 0

    shapes = [(4, 4), (2, 2)]
    query = torch.randn(2, 5, 16)
    value = torch.randn(2, 20, 16)
    out_points = attn(query, torch.rand(2, 5, 2, 2), value, shapes)
    out_boxes = attn(query, torch.rand(2, 5, 2, 4), value, shapes)
    assert out_points.shape == out_boxes.shape == (2, 5, 16)
    with pytest.raises(ValueError, match="spatial_shapes"):
        attn(query, torch.rand(2, 5, 2, 2), value[:, :19], shapes)


def test_padded_values_are_ignored():
    attn = MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=1, num_points=2).double()
    query, ref = torch.randn(1, 3, 8, dtype=torch.float64), torch.rand(1, 3, 1, 2, dtype=torch.float64)
    value = torch.randn(1, 9, 8, dtype=torch.float64)
    pad = torch.zeros(1, 9, dtype=torch.bool)
    pad[0, 6:] = True
    changed = value.clone()
    changed[0, 6:] += 100.0
    torch.testing.assert_close(
        attn(query, ref, value, [(3, 3)], pad), attn(query, ref, changed, [(3, 3)], pad)
    )
