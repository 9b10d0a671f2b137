"""The compiled deformable-attention extension (ops/csrc) against the exact PyTorch path.

The extension is built just in time on first use (about a minute, then cached); where it cannot be
built (no C++ compiler or ninja) these tests are skipped and the PyTorch path is used everywhere,
except under ``DETRLAB_OPS=require`` (CI), where they fail with the build's reason.
"""

from __future__ import annotations

import pytest
import torch

from detrlab.models import deformable_attention as da
from detrlab.models import msda_kernel
from detrlab.models.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention_pytorch,
)
from detrlab.models.msda_check import kernel_calls
from tests.kernels import require_compiled_kernel


@pytest.fixture(autouse=True)
def _compiled_kernel():
    require_compiled_kernel()


def _inputs(shapes, b, q, heads, dim, points, dtype, seed, margin=0.2):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, heads, dim, generator=g, dtype=dtype)
    # locations in [-margin, 1 + margin]: some points fall partly or wholly outside the map
    loc = (
        torch.rand(b, q, heads, len(shapes), points, 2, generator=g, dtype=dtype) * (1 + 2 * margin) - margin
    )
    weights = torch.rand(b, q, heads, len(shapes), points, generator=g, dtype=dtype)
    return value, loc, weights


def _compiled(value, shapes, loc, weights):
    shapes_t, starts = msda_kernel.level_tensors(shapes, value.device)
    return msda_kernel.ms_deform_attn(value, shapes_t, starts, loc, weights)


CASES = [
    # (spatial shapes, batch, queries, heads, channels per head, points)
    ([(6, 9), (3, 5), (1, 1)], 2, 7, 3, 5, 3),  # odd channels, 1x1 level
    ([(13, 11), (7, 6)], 1, 20, 2, 33, 4),  # channels not a multiple of any vector width
    ([(8, 8), (4, 4), (2, 2), (1, 1), (1, 3)], 3, 11, 8, 32, 2),  # DETA-like heads/channels
    ([(5, 4)], 2, 9, 1, 1, 1),  # one level, one channel, one point
]


@pytest.mark.parametrize(("shapes", "b", "q", "heads", "dim", "points"), CASES)
def test_forward_and_backward_match_pytorch_path_in_float32(shapes, b, q, heads, dim, points):
    value, loc, weights = _inputs(shapes, b, q, heads, dim, points, torch.float32, seed=len(shapes) + dim)
    inputs = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    ref_inputs = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    out = _compiled(inputs[0], shapes, inputs[1], inputs[2])
    ref = multi_scale_deformable_attention_pytorch(ref_inputs[0], shapes, ref_inputs[1], ref_inputs[2])
    assert out.shape == ref.shape == (b, q, heads * dim)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, grad)
    expected = torch.autograd.grad(ref, ref_inputs, grad)
    for name, g, e in zip(("value", "locations", "weights"), got, expected):
        # location gradients scale with the level size (d x / d loc = W): compare relative to it
        scale = max(h for h, _ in shapes) if name == "locations" else 1
        torch.testing.assert_close(g / scale, e / scale, rtol=1e-5, atol=1e-5, msg=name)


def test_points_wholly_outside_the_map_read_zero_and_have_zero_gradient():
    shapes = [(4, 5)]
    value = torch.randn(1, 20, 1, 3, dtype=torch.float64, requires_grad=True)
    # x < -1/(2W) - 1/W ... i.e. all four corners outside; and one far inside for contrast
    loc = torch.tensor([[-0.5, 0.5], [0.5, 1.4], [0.5, 0.5]], dtype=torch.float64).view(1, 3, 1, 1, 1, 2)
    loc.requires_grad_(True)
    weights = torch.ones(1, 3, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    out = _compiled(value, shapes, loc, weights)
    assert out[0, :2].abs().max() == 0 and out[0, 2].abs().max() > 0
    out.sum().backward()
    assert loc.grad[0, :2].abs().max() == 0 and weights.grad[0, :2].abs().max() == 0


@pytest.mark.parametrize("dim", [3, 32])  # the run-time channel loop and the unrolled 32-channel one
def test_gradcheck_in_float64(dim):
    shapes = [(4, 5), (2, 3), (1, 1)]
    inputs = tuple(
        t.requires_grad_(True) for t in _inputs(shapes, 2, 5, 2, dim, 2, torch.float64, seed=3, margin=0.3)
    )
    assert torch.autograd.gradcheck(
        lambda v, loc, w: _compiled(v, shapes, loc, w), inputs, eps=1e-6, atol=1e-6
    )


def test_half_precision_inputs_are_computed_in_float32():
    shapes = [(6, 7), (3, 3)]
    value, loc, weights = _inputs(shapes, 1, 4, 2, 8, 2, torch.float32, seed=5)
    for dtype in (torch.bfloat16, torch.float16):
        args = [t.to(dtype) for t in (value, loc, weights)]
        out = _compiled(args[0], shapes, args[1], args[2])
        assert out.dtype == dtype
        expected = multi_scale_deformable_attention_pytorch(
            *(a.float() for a in args[:1]), shapes, args[1].float(), args[2].float()
        )
        torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


def test_bad_shapes_are_rejected():
    shapes = [(4, 5)]
    value, loc, weights = _inputs(shapes, 1, 2, 2, 3, 2, torch.float32, seed=0)
    with pytest.raises(RuntimeError, match="does not fit"):
        _compiled(value[:, :19], shapes, loc, weights)
    with pytest.raises(RuntimeError, match="attn_weight"):
        _compiled(value, shapes, loc, weights[..., :1])


def test_auto_dispatch_uses_the_extension_on_cpu_and_module_matches_pytorch():
    assert da.compiled_kernel() is msda_kernel.ms_deform_attn
    torch.manual_seed(0)
    auto = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    torch.nn.init.normal_(auto.sampling_offsets.weight, std=0.5)
    reference = MultiScaleDeformableAttention(
        embed_dim=32, num_heads=4, num_levels=2, num_points=3, implementation="pytorch"
    )
    reference.load_state_dict(auto.state_dict())
    shapes = [(6, 6), (3, 3)]
    query, ref_points, value = torch.randn(2, 10, 32), torch.rand(2, 10, 2, 4), torch.randn(2, 45, 32)
    out = auto(query, ref_points, value, shapes)
    expected = reference(query, ref_points, value, shapes)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(auto.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_op_traces_under_torch_compile_without_graph_breaks():
    shapes = [(4, 5), (2, 3)]
    value, loc, weights = _inputs(shapes, 1, 3, 2, 4, 2, torch.float32, seed=1)
    shapes_t, starts = msda_kernel.level_tensors(shapes, value.device)
    explanation = torch._dynamo.explain(torch.ops.detrlab.ms_deform_attn)(
        value, shapes_t, starts, loc, weights
    )
    assert explanation.graph_break_count == 0


def test_disabled_extension_falls_back_with_a_one_line_notice(monkeypatch, caplog):
    saved = dict(msda_kernel._state)
    monkeypatch.setenv("DETRLAB_OPS", "0")
    msda_kernel._state.clear()
    msda_kernel._state["registered"] = saved.get("registered")
    try:
        with caplog.at_level("WARNING", logger=msda_kernel.__name__):
            assert not msda_kernel.load()
        notices = [r.getMessage() for r in caplog.records if "deformable-attention" in r.getMessage()]
        assert len(notices) == 1 and "\n" not in notices[0] and "DETRLAB_OPS=0" in notices[0]
        assert "PyTorch path" in notices[0]
    finally:
        msda_kernel._state.clear()
        msda_kernel._state.update(saved)


def test_kernel_calls_counts_compiled_forwards_only():
    shapes = [(4, 5)]
    value, loc, weights = (t.requires_grad_(True) for t in _inputs(shapes, 1, 3, 2, 3, 2, torch.float32, 0))
    with kernel_calls() as calls:
        _compiled(value, shapes, loc, weights).sum().backward()  # the backward op is not a forward
        multi_scale_deformable_attention_pytorch(value, shapes, loc, weights)
    assert calls.forward == 1
