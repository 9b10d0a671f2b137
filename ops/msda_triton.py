"""Triton kernels of multi-scale deformable attention: forward, backward, deterministic value gradient.

    out[b, q, h, :] = sum_{l, p} a[b, q, h, l, p] * bilinear(value[b, level l, h, :], loc[b, q, h, l, p])

Bilinear sampling with zero padding, identical to ``F.grid_sample(mode="bilinear",
padding_mode="zeros", align_corners=False)`` on ``grid = 2 * loc - 1`` and to the C++ kernel in
``csrc/``: pixel (i, j) of a level of size (H_l, W_l) has its centre at ((j + 0.5) / W_l,
(i + 0.5) / H_l) in location units, and a corner outside the map reads zero.

Layouts (all contiguous): value [B, S, H, D] (levels flattened row-major, concatenated along S);
spatial_shapes int64 [L, 2] as (H_l, W_l); level_start_index int64 [L]; sampling_loc
[B, Q, H, L, P, 2] as (x, y); attn_weight [B, Q, H, L, P]; output / grad_output [B, Q, H * D].

The arithmetic runs in the dtype of ``sampling_loc`` (float32, or float64 for exact checks); the
value may be float16 / bfloat16 / float32 / float64 and is upcast on load. Level shapes and start
indices are read from device tensors, and the token and query counts are runtime integers that
Triton does not specialise on (``do_not_specialize``), so a new image size reuses the compiled
kernel; only the head count, head size, level and point counts and block sizes are compile-time.
Levels and points are runtime loops (only the four bilinear corners are unrolled): unrolling all
L * P * 4 gathers made the backward's PTX 4 MB and its compilation take minutes.

These functions are decorated when this module is imported: with ``TRITON_INTERPRET=1`` set
before that, ``triton.jit`` returns interpreted functions that run on CPU tensors (the tests).
The launchers and the PyTorch custom ops live in :mod:`detrlab.models.msda_triton`.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "INTERPRETED",
    "msda_backward_kernel",
    "msda_forward_kernel",
    "msda_grad_value_deterministic_kernel",
]

# Integer arguments that change with the image size (tokens) or batch content (queries).
_RUNTIME_SIZES = ["num_tokens", "num_queries"]


@triton.jit
def _level_geometry(shapes_ptr, starts_ptr, level):
    """(H_l, W_l, start_l) of one level, read from the device tables (int64 scalars)."""
    height = tl.load(shapes_ptr + 2 * level)
    width = tl.load(shapes_ptr + 2 * level + 1)
    start = tl.load(starts_ptr + level)
    return height, width, start


@triton.jit
def _pixel_coordinates(loc_x, loc_y, height, width, active):
    """Top-left bilinear corner and fractional offsets of the sampling points.

    grid_sample with align_corners=False: x = loc_x * W - 0.5 (same for y). Points with x <= -1,
    x >= W (same for y) or NaN have no corner inside the map and read zero. Returns (x0, y0, lx, ly,
    inside): x0, y0 int64 floors, lx, ly in [0, 1). Coordinates are replaced by 0 where not inside,
    so that far-away or NaN points give finite weights (a NaN weight times a zero read is NaN).
    """
    width_f = width.to(loc_x.dtype)
    height_f = height.to(loc_x.dtype)
    x = loc_x * width_f - 0.5
    y = loc_y * height_f - 0.5
    inside = active & (x > -1.0) & (y > -1.0) & (x < width_f) & (y < height_f)
    x = tl.where(inside, x, 0.0)
    y = tl.where(inside, y, 0.0)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    return x0f.to(tl.int64), y0f.to(tl.int64), x - x0f, y - y0f, inside


@triton.jit
def _sampling_point(loc_ptr, weight_ptr, rows, active, level, point, height, width, NUM_LEVELS, NUM_POINTS):
    """One sampling point of the ``rows`` (query, head) pairs: its index ``lp`` into the
    [.., L, P] weights (and [.., L, P, 2] locations), its attention weight, and its bilinear
    corner and offsets (see ``_pixel_coordinates``). Returns (lp, attn, x0, y0, lx, ly, inside)."""
    lp = rows * (NUM_LEVELS * NUM_POINTS) + level * NUM_POINTS + point
    loc_x = tl.load(loc_ptr + 2 * lp, mask=active, other=0.0)
    loc_y = tl.load(loc_ptr + 2 * lp + 1, mask=active, other=0.0)
    attn = tl.load(weight_ptr + lp, mask=active, other=0.0)
    x0, y0, lx, ly, inside = _pixel_coordinates(loc_x, loc_y, height, width, active)
    return lp, attn, x0, y0, lx, ly, inside


@triton.jit
def _corner(x0, y0, lx, ly, inside, height, width, corner: tl.constexpr):
    """One of the four bilinear corners (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right).

    Returns (flat pixel index inside the level, valid mask, bilinear weight, d weight / d x,
    d weight / d y); the index is 0 where the corner is not valid (outside the map).
    """
    dx = corner % 2
    dy = corner // 2
    # weight along x: lx for the right corner, 1 - lx for the left one (same for y)
    wx = lx if dx == 1 else 1.0 - lx
    wy = ly if dy == 1 else 1.0 - ly
    cx = x0 + dx
    cy = y0 + dy
    valid = inside & (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
    index = tl.where(valid, cy * width + cx, 0)
    return index, valid, wx * wy, (2 * dx - 1) * wy, (2 * dy - 1) * wx


@triton.jit
def _query_block(
    num_queries,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """This program's (head, batch), its BLOCK_Q queries and BLOCK_D channels with their masks, and
    the (b, q, h) row of every query (int64, so large batches cannot overflow)."""
    q_block = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    queries = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = queries < num_queries
    channels = tl.arange(0, BLOCK_D)
    d_mask = channels < HEAD_DIM
    rows = (batch * num_queries + queries) * NUM_HEADS + head
    return head, batch, q_mask, channels, d_mask, rows


@triton.jit(do_not_specialize=_RUNTIME_SIZES)
def msda_forward_kernel(
    value_ptr,
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    weight_ptr,
    out_ptr,
    num_tokens,
    num_queries,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_LEVELS: tl.constexpr,
    NUM_POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (query block, head, batch): out[b, block, h, :] for BLOCK_Q queries, all D channels."""
    head, batch, q_mask, channels, d_mask, rows = _query_block(
        num_queries, NUM_HEADS, HEAD_DIM, BLOCK_Q, BLOCK_D
    )
    token_stride = NUM_HEADS * HEAD_DIM
    value_bh = value_ptr + batch * num_tokens * token_stride + head * HEAD_DIM
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=loc_ptr.dtype.element_ty)
    for level in range(NUM_LEVELS):
        height, width, start = _level_geometry(shapes_ptr, starts_ptr, level)
        value_level = value_bh + start * token_stride
        for point in range(NUM_POINTS):
            _, attn, x0, y0, lx, ly, inside = _sampling_point(
                loc_ptr, weight_ptr, rows, q_mask, level, point, height, width, NUM_LEVELS, NUM_POINTS
            )
            for corner in tl.static_range(4):
                index, valid, w, _, _ = _corner(x0, y0, lx, ly, inside, height, width, corner)
                v = tl.load(
                    value_level + index[:, None] * token_stride + channels[None, :],
                    mask=valid[:, None] & d_mask[None, :],
                    other=0.0,
                )
                acc += (attn * w)[:, None] * v.to(acc.dtype)
    out_offsets = rows[:, None] * HEAD_DIM + channels[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit(do_not_specialize=_RUNTIME_SIZES)
def msda_backward_kernel(
    value_ptr,
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    weight_ptr,
    grad_out_ptr,
    grad_value_ptr,
    grad_loc_ptr,
    grad_weight_ptr,
    num_tokens,
    num_queries,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_LEVELS: tl.constexpr,
    NUM_POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACCUMULATE_GRAD_VALUE: tl.constexpr,
):
    """Program (query block, head, batch), as in the forward.

    grad_loc and grad_weight of the block's queries are written by this program alone (it holds
    all D channels, so the dot products are complete): no atomics. grad_value is scattered with
    atomic adds into a zero-initialised buffer in the arithmetic dtype (float32 / float64) when
    ACCUMULATE_GRAD_VALUE; otherwise it is left to the deterministic kernel.
    """
    head, batch, q_mask, channels, d_mask, rows = _query_block(
        num_queries, NUM_HEADS, HEAD_DIM, BLOCK_Q, BLOCK_D
    )
    token_stride = NUM_HEADS * HEAD_DIM
    block_mask = q_mask[:, None] & d_mask[None, :]
    compute_dtype = loc_ptr.dtype.element_ty
    grad_out = tl.load(
        grad_out_ptr + rows[:, None] * HEAD_DIM + channels[None, :], mask=block_mask, other=0.0
    ).to(compute_dtype)
    bh_offset = batch * num_tokens * token_stride + head * HEAD_DIM
    for level in range(NUM_LEVELS):
        height, width, start = _level_geometry(shapes_ptr, starts_ptr, level)
        level_offset = bh_offset + start * token_stride
        for point in range(NUM_POINTS):
            lp, attn, x0, y0, lx, ly, inside = _sampling_point(
                loc_ptr, weight_ptr, rows, q_mask, level, point, height, width, NUM_LEVELS, NUM_POINTS
            )
            grad_attn = tl.zeros([BLOCK_Q], dtype=compute_dtype)
            grad_x = tl.zeros([BLOCK_Q], dtype=compute_dtype)
            grad_y = tl.zeros([BLOCK_Q], dtype=compute_dtype)
            for corner in tl.static_range(4):
                index, valid, w, dw_dx, dw_dy = _corner(x0, y0, lx, ly, inside, height, width, corner)
                corner_offsets = level_offset + index[:, None] * token_stride + channels[None, :]
                corner_mask = valid[:, None] & d_mask[None, :]
                v = tl.load(value_ptr + corner_offsets, mask=corner_mask, other=0.0).to(compute_dtype)
                # <grad_out, value at the corner> per query
                dot = tl.sum(grad_out * v, axis=1)
                grad_attn += w * dot
                grad_x += dw_dx * dot
                grad_y += dw_dy * dot
                if ACCUMULATE_GRAD_VALUE:
                    tl.atomic_add(
                        grad_value_ptr + corner_offsets,
                        (attn * w)[:, None] * grad_out,
                        mask=corner_mask,
                    )
            tl.store(grad_weight_ptr + lp, grad_attn, mask=q_mask)
            # d x / d loc_x = W_l, d y / d loc_y = H_l
            tl.store(grad_loc_ptr + 2 * lp, attn * grad_x * width.to(compute_dtype), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * lp + 1, attn * grad_y * height.to(compute_dtype), mask=q_mask)


@triton.jit(do_not_specialize=_RUNTIME_SIZES)
def msda_grad_value_deterministic_kernel(
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    weight_ptr,
    grad_out_ptr,
    grad_value_ptr,
    num_tokens,
    num_queries,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_LEVELS: tl.constexpr,
    NUM_POINTS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (level, head, batch): the value gradient of that slice, summed in a fixed order.

    The program is the only writer of grad_value[b, level l, h, :] and walks the queries and points
    in order, one at a time, so the floating-point sum order (hence the result) does not depend on
    scheduling. The atomic adds only serve ordering: each element is updated by one thread of this
    program, and one thread's read-modify-writes of an address happen in program order. Slower
    than the scattered kernel (queries are serialised), for runs that ask for determinism.
    """
    level = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    channels = tl.arange(0, BLOCK_D)
    d_mask = channels < HEAD_DIM
    token_stride = NUM_HEADS * HEAD_DIM
    compute_dtype = loc_ptr.dtype.element_ty
    height, width, start = _level_geometry(shapes_ptr, starts_ptr, level)
    level_offset = batch * num_tokens * token_stride + start * token_stride + head * HEAD_DIM
    for query in range(num_queries):
        row = (batch * num_queries + query) * NUM_HEADS + head
        grad_out = tl.load(grad_out_ptr + row * HEAD_DIM + channels, mask=d_mask, other=0.0).to(compute_dtype)
        for point in range(NUM_POINTS):
            _, attn, x0, y0, lx, ly, inside = _sampling_point(
                loc_ptr, weight_ptr, row, True, level, point, height, width, NUM_LEVELS, NUM_POINTS
            )
            for corner in tl.static_range(4):
                index, valid, w, _, _ = _corner(x0, y0, lx, ly, inside, height, width, corner)
                tl.atomic_add(
                    grad_value_ptr + level_offset + index * token_stride + channels,
                    (attn * w) * grad_out,
                    mask=valid & d_mask,
                )


def _is_interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every supported triton has the interpreter
        return False
    return isinstance(msda_forward_kernel, InterpretedFunction)


#: Whether these kernels were decorated under ``TRITON_INTERPRET=1`` (they then run on CPU tensors).
INTERPRETED = _is_interpreted()
