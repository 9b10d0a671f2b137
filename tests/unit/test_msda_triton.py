"""The Triton deformable-attention kernels against the PyTorch path, on CPU through Triton's interpreter.

The interpreter is switched on for the whole session by ``tests/triton_interpreter.py`` (imported
first by ``tests/conftest.py``), because ``TRITON_INTERPRET`` must be set before triton itself is
imported, and only where CUDA is unavailable; on a GPU machine the same tests run the compiled
kernels on CUDA tensors instead.

Every output and gradient buffer of the op is filled with NaN before the kernels run
(:func:`poisoned_buffers`), so an element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import pytest
import torch

from detrlab.errors import AttentionImplementationError
from detrlab.models import deformable_attention as da
from detrlab.models import msda_triton
from detrlab.models.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_pytorch,
)
from detrlab.models.level_tables import level_tables
from detrlab_ops import msda_triton as kernels
from tests.triton_interpreter import INTERPRETER_UNAVAILABLE

DEVICE = torch.device("cpu" if kernels.INTERPRETED else "cuda")
pytestmark = pytest.mark.skipif(
    msda_triton.unavailable_reason(DEVICE) is not None,
    reason=f"no Triton kernels here: {INTERPRETER_UNAVAILABLE or msda_triton.unavailable_reason(DEVICE)}",
)
interpreter_only = pytest.mark.skipif(not kernels.INTERPRETED, reason="checks the CPU dispatch rules")


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Every buffer the kernels must write in full starts as NaN."""

    def nan_filled(shape, dtype, device):
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(msda_triton, "_uninitialized", nan_filled)


def _inputs(shapes, b, q, heads, dim, points, dtype, seed):
    """Random value / locations / weights; locations in [-0.3, 1.3] with some exactly on the borders."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, heads, dim, generator=g, dtype=torch.float64)
    loc = torch.rand(b, q, heads, len(shapes), points, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    # every third query: point 0 exactly on the left/right border, point 1 on the top/bottom one
    loc[:, ::3, :, :, 0, 0] = 0.0
    loc[:, 1::3, :, :, 0, 0] = 1.0
    if points > 1:
        loc[:, ::3, :, :, 1, 1] = 1.0
        loc[:, 2::3, :, :, 1, 1] = 0.0
    weights = torch.rand(b, q, heads, len(shapes), points, generator=g, dtype=torch.float64)
    return (t.to(DEVICE, dtype) for t in (value, loc, weights))


def _triton(value, shapes, loc, weights):
    tables = level_tables(shapes, value.device)
    return msda_triton.ms_deform_attn_triton(
        value, tables.spatial_shapes, tables.level_start_index, loc, weights
    )


def _forward_and_grads(fn, value, shapes, loc, weights, grad_out=None):
    inputs = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    out = fn(inputs[0], shapes, inputs[1], inputs[2])
    if grad_out is None:
        generator = torch.Generator().manual_seed(1)
        grad_out = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(DEVICE)
    return out, torch.autograd.grad(out, inputs, grad_out), grad_out


def _block_q(dim):
    return msda_triton.block_sizes(dim)[0]


# (spatial shapes, batch, queries, heads, channels per head, points); queries are never a multiple
# of the query block, and the first case spans two blocks
CASES = {
    "d30_p3_1x1_level_two_blocks": ([(6, 9), (3, 5), (1, 1)], 1, _block_q(30) + 7, 2, 30, 3),
    "d71_p3_1x1_level": ([(5, 4), (1, 1)], 2, 9, 1, 71, 3),
}
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_and_gradients_equal_the_pytorch_path(case, dtype):
    shapes, b, q, heads, dim, points = CASES[case]
    assert q % _block_q(dim) != 0
    value, loc, weights = _inputs(shapes, b, q, heads, dim, points, dtype, seed=dim)
    out, grads, grad_out = _forward_and_grads(_triton, value, shapes, loc, weights)
    ref, ref_grads, _ = _forward_and_grads(
        multi_scale_deformable_attention_pytorch, value, shapes, loc, weights, grad_out
    )
    assert out.shape == (b, q, heads * dim) and out.dtype == dtype
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    for name, got, expected in zip(("value", "locations", "weights"), grads, ref_grads):
        assert got.dtype == dtype, name
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol * 10, msg=name)


def test_gradcheck_in_float64():
    shapes = [(3, 4), (1, 1)]
    value, loc, weights = _inputs(shapes, 1, 3, 1, 3, 2, torch.float64, seed=3)
    inputs = [t.requires_grad_(True) for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(
        lambda v, xy, w: _triton(v, shapes, xy, w), inputs, eps=1e-6, atol=1e-7, fast_mode=True
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_value_against_a_float64_reference(dtype):
    shapes = [(6, 5), (1, 1)]
    value, loc, weights = _inputs(shapes, 1, 11, 2, 16, 3, torch.float64, seed=7)
    half_value = value.to(dtype)
    out, grads, grad_out = _forward_and_grads(_triton, half_value, shapes, loc.float(), weights.float())
    # the reference computes everything in float64 from the unrounded value
    ref, ref_grads, _ = _forward_and_grads(
        multi_scale_deformable_attention_pytorch,
        value,
        shapes,
        loc,
        weights,
        grad_out.double(),
    )
    assert out.dtype == dtype and grads[0].dtype == dtype
    assert grads[1].dtype == grads[2].dtype == torch.float32
    for name, got, expected in zip(("out", "value", "loc", "weights"), (out, *grads), (ref, *ref_grads)):
        relative = (got.double() - expected).abs().max() / expected.abs().max()
        assert relative <= 2e-2, f"{name}: relative error {relative:.2e}"


def test_points_outside_or_nan_read_zero_and_get_zero_gradients():
    shapes = [(4, 4), (2, 3)]
    value, loc, weights = _inputs(shapes, 1, 5, 1, 4, 2, torch.float64, seed=11)
    loc[:, 0] = -0.8  # wholly outside (x, y <= -1 pixel)
    loc[:, 1] = 1.9
    loc[:, 2, :, :, :, 0] = float("nan")
    out, (grad_value, grad_loc, grad_weight), _ = _forward_and_grads(_triton, value, shapes, loc, weights)
    assert torch.equal(out[:, :3], torch.zeros_like(out[:, :3]))
    assert torch.equal(grad_loc[:, :3], torch.zeros_like(grad_loc[:, :3]))
    assert torch.equal(grad_weight[:, :3], torch.zeros_like(grad_weight[:, :3]))
    assert torch.isfinite(grad_value).all() and torch.isfinite(out).all()
    ref = multi_scale_deformable_attention_pytorch(value, shapes, loc[:, 3:], weights[:, 3:])
    torch.testing.assert_close(out[:, 3:], ref, rtol=1e-10, atol=1e-10)


def test_deterministic_mode_sums_the_value_gradient_in_a_fixed_order():
    shapes = [(3, 4), (1, 1)]
    value, loc, weights = _inputs(shapes, 1, 3, 1, 5, 2, torch.float64, seed=5)
    _, grads, grad_out = _forward_and_grads(_triton, value, shapes, loc, weights)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _, first, _ = _forward_and_grads(_triton, value, shapes, loc, weights, grad_out)
        _, second, _ = _forward_and_grads(_triton, value, shapes, loc, weights, grad_out)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    for got, expected in zip(first, grads):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@interpreter_only
def test_dispatch_rules_per_device(monkeypatch):
    cpu, cuda, meta = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
    assert da.resolve_implementation("triton", cpu) == "triton"  # interpreter on
    assert da.resolve_implementation("pytorch", cpu) == "pytorch"
    # auto never picks the interpreter: CPU tensors go to the C++ kernel (or PyTorch without it)
    assert da.resolve_implementation("auto", cpu) == ("compiled" if da.compiled_kernel() else "pytorch")
    assert da.resolve_implementation("auto", meta) == "pytorch"
    with pytest.raises(AttentionImplementationError, match=r"'triton'.*meta tensors"):
        da.resolve_implementation("triton", meta)
    with pytest.raises(AttentionImplementationError, match=r"'compiled'.*cuda tensors"):
        da.resolve_implementation("compiled", cuda)
    with pytest.raises(AttentionImplementationError, match="must be one of"):
        da.resolve_implementation("cuda", cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert da.resolve_implementation("auto", cuda) == "triton"
    assert da.resolve_implementation("triton", cuda) == "triton"
    # without the interpreter, Triton on CPU tensors is a config error naming the device and the setting
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    value, loc, weights = _inputs([(2, 2)], 1, 2, 1, 2, 1, torch.float32, seed=0)
    with pytest.raises(AttentionImplementationError, match=r"'triton'.*cpu tensors.*TRITON_INTERPRET=1"):
        multi_scale_deformable_attention(value, [(2, 2)], loc, weights, "triton")


def test_module_forced_to_triton_equals_pytorch_module():
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(32, 2, 2, 3, implementation="triton").double().to(DEVICE)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)
    reference = MultiScaleDeformableAttention(32, 2, 2, 3, implementation="pytorch").double().to(DEVICE)
    reference.load_state_dict(module.state_dict())
    shapes = [(5, 5), (2, 3)]
    query = torch.randn(2, 7, 32, dtype=torch.float64, device=DEVICE)
    points = torch.rand(2, 7, 2, 2, dtype=torch.float64, device=DEVICE)
    value = torch.randn(2, 31, 32, dtype=torch.float64, device=DEVICE)
    out = module(query, points, value, shapes)
    torch.testing.assert_close(out, reference(query, points, value, shapes), rtol=1e-10, atol=1e-10)


def test_bf16_autocast_hands_the_triton_op_a_bf16_value_and_fp32_locations(monkeypatch):
    calls = []
    real_op = msda_triton.ms_deform_attn_triton

    def spy(value, shapes, starts, loc, weights):
        calls.append((value.dtype, loc.dtype, weights.dtype))
        return real_op(value, shapes, starts, loc, weights)

    monkeypatch.setattr(msda_triton, "ms_deform_attn_triton", spy)
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(16, 2, 2, 2, implementation="triton").to(DEVICE)
    shapes = [(4, 4), (2, 2)]
    query, points, value = (
        t.to(DEVICE) for t in (torch.randn(1, 5, 16), torch.rand(1, 5, 2, 2), torch.randn(1, 20, 16))
    )
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = module(query, points, value, shapes)
    assert calls == [(torch.bfloat16, torch.float32, torch.float32)]
    assert out.dtype == torch.bfloat16


def test_image_and_query_counts_are_runtime_arguments():
    """A new image size (token count) or query count must reuse the compiled kernels.

    On a GPU the compiled-kernel cache is counted across two sizes; the interpreter compiles
    nothing, so there the kernels' declarations are checked instead.
    """
    for kernel in (
        kernels.msda_forward_kernel,
        kernels.msda_backward_kernel,
        kernels.msda_grad_value_deterministic_kernel,
    ):
        options = kernel.kwargs if kernels.INTERPRETED else {"do_not_specialize": kernel.do_not_specialize}
        names = [kernel.arg_names[i] if isinstance(i, int) else i for i in options["do_not_specialize"]]
        assert set(names) == {"num_tokens", "num_queries"}
    if kernels.INTERPRETED:
        return
    for shapes, q in (([(10, 12), (5, 6)], 33), ([(17, 9), (9, 5)], 47)):
        value, loc, weights = _inputs(shapes, 1, q, 2, 32, 2, torch.float32, seed=q)
        _forward_and_grads(_triton, value, shapes, loc, weights)
    for kernel in (kernels.msda_forward_kernel, kernels.msda_backward_kernel):
        # JITFunction.device_caches[device] starts with the dict of compiled variants
        cache = kernel.device_caches[torch.cuda.current_device()][0]
        assert len(cache) == 1, f"{kernel.fn.__name__} was compiled {len(cache)} times for two sizes"
