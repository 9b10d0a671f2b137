"""The Triton multi-scale deformable attention as PyTorch custom ops (kernels in ``detrlab_ops.msda_triton``).

Two operators, both ``torch.library.triton_op`` launching their kernels through ``wrap_triton`` so
that ``torch.compile`` sees the kernels (and their fake implementations come from tracing the same
launcher):

* ``detrlab::msda_triton_forward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight)``
  -> ``[B, Q, H * D]`` in ``value.dtype``;
* ``detrlab::msda_triton_backward(..., grad_output, deterministic)`` -> (grad_value, grad_loc,
  grad_weight), with the autograd formula of the forward registered through
  ``torch.library.register_autograd``.

Dtypes: ``value`` float16 / bfloat16 / float32 / float64; ``sampling_loc`` and ``attn_weight``
float32 (float64 with a float64 value: the exact-check mode); accumulation in float32 (float64);
output in the value's dtype. :func:`ms_deform_attn_triton` converts the locations and weights to
that arithmetic dtype, so callers may pass them in any float dtype.

Under ``torch.use_deterministic_algorithms(True)`` the value gradient comes from a kernel in which
one program owns each (image, level, head) slice and sums its contributions in a fixed order (no
floating-point atomics race); otherwise it is scattered with atomic adds (faster).

The kernels run on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` was set before the
kernel module was imported (Triton's interpreter; that is how the CPU tests run them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import triton
from torch import Tensor
from torch.library import triton_op, wrap_triton

from detrlab.models.msda_autograd import register_deformable_autograd
from detrlab_ops import msda_triton as kernels

__all__ = ["block_sizes", "ms_deform_attn_triton", "unavailable_reason"]

_VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def block_sizes(head_dim: int) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_D) for a head size: D padded to a power of two, about 2048 elements a tile.

    Under the interpreter each program costs Python overhead per operation, so bigger query blocks
    (fewer programs) are faster there.
    """
    block_d = triton.next_power_of_2(head_dim)
    budget = 8192 if kernels.INTERPRETED else 2048
    block_q = max(16, min(64, budget // block_d))
    return block_q, block_d


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (``None`` when they can)."""
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available in this process"
    if device.type == "cpu":
        if kernels.INTERPRETED:
            return None
        return (
            "Triton kernels run on CPU tensors only under Triton's interpreter "
            "(TRITON_INTERPRET=1 set before detrlab is imported)"
        )
    return f"there is no Triton kernel for {device.type} tensors"


def _uninitialized(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A buffer that a kernel writes in full (the tests fill it with NaN to catch an unwritten element)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch_config(value: Tensor, sampling_loc: Tensor) -> dict[str, int]:
    _, _, heads, head_dim = value.shape
    _, _, _, levels, points, _ = sampling_loc.shape
    return {"NUM_HEADS": heads, "HEAD_DIM": head_dim, "NUM_LEVELS": levels, "NUM_POINTS": points}


def _launch_per_query_block(
    kernel: Any, inputs: tuple[Tensor, ...], buffers: tuple[Tensor, ...], **constants: bool
) -> None:
    """Launch ``kernel`` with one program per (block of queries, head, image), as the forward and the
    backward kernels are laid out.

    Args:
        kernel: a ``triton.jit`` kernel taking the five operator ``inputs`` (value, spatial_shapes,
            level_start_index, sampling_loc, attn_weight), then ``buffers``, the token and query
            counts, the sizes of :func:`_launch_config`, ``BLOCK_Q`` / ``BLOCK_D`` and the extra
            ``constants``.
    """
    value, _, _, sampling_loc, _ = inputs
    b, num_tokens, heads, head_dim = value.shape
    num_queries = sampling_loc.shape[1]
    block_q, block_d = block_sizes(head_dim)
    grid = (triton.cdiv(num_queries, block_q), heads, b)
    wrap_triton(kernel)[grid](
        *inputs,
        *buffers,
        num_tokens,
        num_queries,
        **_launch_config(value, sampling_loc),
        BLOCK_Q=block_q,
        BLOCK_D=block_d,
        **constants,
    )


@triton_op("detrlab::msda_triton_forward", mutates_args=())
def _forward(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_loc: Tensor,
    attn_weight: Tensor,
) -> Tensor:
    b, _, heads, head_dim = value.shape
    out = _uninitialized((b, sampling_loc.shape[1], heads * head_dim), value.dtype, value.device)
    inputs = (value, spatial_shapes, level_start_index, sampling_loc, attn_weight)
    _launch_per_query_block(kernels.msda_forward_kernel, inputs, (out,))
    return out


@triton_op("detrlab::msda_triton_backward", mutates_args=())
def _backward(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_loc: Tensor,
    attn_weight: Tensor,
    grad_output: Tensor,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    # Accumulated in the arithmetic dtype (float32, or float64 for float64 inputs), cast at the end.
    grad_value = torch.zeros(value.shape, dtype=sampling_loc.dtype, device=value.device)
    grad_loc = _uninitialized(sampling_loc.shape, sampling_loc.dtype, value.device)
    grad_weight = _uninitialized(attn_weight.shape, attn_weight.dtype, value.device)
    inputs = (value, spatial_shapes, level_start_index, sampling_loc, attn_weight)
    _launch_per_query_block(
        kernels.msda_backward_kernel,
        inputs,
        (grad_output, grad_value, grad_loc, grad_weight),
        ACCUMULATE_GRAD_VALUE=not deterministic,
    )
    if deterministic:
        b, num_tokens, heads, head_dim = value.shape
        levels = sampling_loc.shape[3]
        wrap_triton(kernels.msda_grad_value_deterministic_kernel)[(levels, heads, b)](
            spatial_shapes,
            level_start_index,
            sampling_loc,
            attn_weight,
            grad_output,
            grad_value,
            num_tokens,
            sampling_loc.shape[1],
            **_launch_config(value, sampling_loc),
            BLOCK_D=block_sizes(head_dim)[1],
            # one head's channels per step: a single warp holds them (more would only idle)
            num_warps=1,
        )
    return grad_value.to(value.dtype), grad_loc, grad_weight


def _backward_for_autograd(value, shapes, starts, locations, weights, grad_output):
    # The deterministic setting is read when backward runs, not when the forward was recorded.
    return _backward(
        value,
        shapes,
        starts,
        locations,
        weights,
        grad_output.to(value.dtype).contiguous(),
        torch.are_deterministic_algorithms_enabled(),
    )


register_deformable_autograd("detrlab::msda_triton_forward", _backward_for_autograd)


def _check_inputs(
    value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, loc: Tensor, weight: Tensor
) -> None:
    # Shapes and dtypes only: reading the level table's values would force a device sync.
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, H, D], got shape {tuple(value.shape)}")
    if value.dtype not in _VALUE_DTYPES:
        raise ValueError(f"value must be float16, bfloat16, float32 or float64, got {value.dtype}")
    b, _, heads, _ = value.shape
    if loc.dim() != 6 or loc.shape[-1] != 2 or loc.shape[0] != b or loc.shape[2] != heads:
        raise ValueError(
            f"sampling_locations must be [B, Q, H, L, P, 2] matching value {tuple(value.shape)}, "
            f"got {tuple(loc.shape)}"
        )
    if weight.shape != loc.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(weight.shape)} must be sampling_locations' shape without the "
            f"last dimension, {tuple(loc.shape[:-1])}"
        )
    levels = loc.shape[3]
    if spatial_shapes.shape != (levels, 2) or level_start_index.shape != (levels,):
        raise ValueError(
            f"spatial_shapes must be [{levels}, 2] and level_start_index [{levels}] for {levels} levels, "
            f"got {tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}"
        )
    if spatial_shapes.dtype != torch.long or level_start_index.dtype != torch.long:
        raise ValueError("spatial_shapes and level_start_index must be int64 tensors")
    devices = {t.device for t in (value, spatial_shapes, level_start_index, loc, weight)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")


def ms_deform_attn_triton(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The Triton sampling, differentiable in value, locations and weights.

    Args:
        value: [B, S, H, D] float16 / bfloat16 / float32 / float64.
        spatial_shapes: int64 [L, 2] (H_l, W_l), on value's device.
        level_start_index: int64 [L], on value's device.
        sampling_locations: [B, Q, H, L, P, 2] (x, y) in level-relative units; computed in float32
            (float64 when the value is float64).
        attention_weights: [B, Q, H, L, P], same dtype rule.

    Returns:
        [B, Q, H * D] in ``value.dtype``.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    compute_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    return _forward(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.to(compute_dtype).contiguous(),
        attention_weights.to(compute_dtype).contiguous(),
    )
