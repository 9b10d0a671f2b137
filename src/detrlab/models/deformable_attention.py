"""Multi-scale deformable attention: each query attends to a few sampled points on every feature level.

The sampling itself (bilinear interpolation of the values at fractional locations, weighted sum over
levels and points) goes through :func:`multi_scale_deformable_attention`, the one dispatch point
between the pure-PyTorch implementation below and the kernels:

* ``"pytorch"``: :func:`multi_scale_deformable_attention_pytorch` (``F.grid_sample``; exact,
  differentiable, any device and dtype).
* ``"compiled"``: the C++ extension built from ``ops/csrc`` (see :mod:`detrlab.models.msda_kernel`;
  built just in time on first use and cached; CPU kernels), or a kernel installed with
  :func:`register_compiled_kernel`.
* ``"triton"``: the Triton kernels of ``ops/msda_triton.py`` (see :mod:`detrlab.models.msda_triton`;
  CUDA tensors, or CPU tensors under Triton's interpreter, ``TRITON_INTERPRET=1``).
* ``"auto"`` (default): Triton for CUDA tensors, the compiled kernel for CPU tensors, PyTorch for
  any other device or when the kernel is unavailable (with a one-line notice when the C++
  extension cannot be built).

A forced ``"compiled"`` / ``"triton"`` on a device without that kernel raises
:class:`~detrlab.errors.AttentionImplementationError` naming the device and the setting.

Dtypes: the Triton path takes the value in its own dtype (under autocast: the autocast dtype, so
bf16-mixed halves the kernel's memory traffic), the locations and weights in float32, and returns
the value's dtype. The compiled and PyTorch paths sample in float32 whenever the inputs are half
precision or autocast is on (bilinear weights lose precision in fp16) and cast the result back to
the value's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detrlab.errors import AttentionImplementationError
from detrlab.models.level_tables import LevelTables, level_tables

__all__ = [
    "IMPLEMENTATIONS",
    "MultiScaleDeformableAttention",
    "compiled_kernel",
    "multi_scale_deformable_attention",
    "multi_scale_deformable_attention_pytorch",
    "register_compiled_kernel",
    "resolve_implementation",
    "triton_kernel",
]

IMPLEMENTATIONS = ("auto", "pytorch", "compiled", "triton")

# Signature: (value [B,S,H,Dh], spatial_shapes long [L,2], level_start_index long [L],
#             sampling_locations [B,Q,H,L,P,2], attention_weights [B,Q,H,L,P], im2col_step) -> [B,Q,H*Dh]
KernelFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, int], Tensor]
_compiled: dict[str, object] = {}  # "kernel": KernelFn | None, "devices": tuple[str, ...]


def register_compiled_kernel(kernel: KernelFn | None, devices: Sequence[str] = ("cpu", "cuda")) -> None:
    """Install (or, with ``None``, remove) the compiled sampling kernel used by ``"auto"``/``"compiled"``.

    ``devices``: the device types ``"auto"`` hands to the kernel.
    """
    _compiled["kernel"] = kernel
    _compiled["devices"] = tuple(devices) if kernel is not None else ()


def compiled_kernel() -> KernelFn | None:
    """The compiled kernel: the registered one, else the ``ops/`` extension (built on first call)."""
    if "kernel" not in _compiled:
        from detrlab.models import msda_kernel

        if msda_kernel.load():
            register_compiled_kernel(msda_kernel.ms_deform_attn, msda_kernel.supported_devices())
        else:
            register_compiled_kernel(None)
    return _compiled["kernel"]  # type: ignore[return-value]


# Signature: (value [B,S,H,Dh], spatial_shapes long [L,2], level_start_index long [L],
#             sampling_locations [B,Q,H,L,P,2], attention_weights [B,Q,H,L,P]) -> [B,Q,H*Dh]
TritonFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def triton_kernel(device: torch.device) -> tuple[TritonFn | None, str | None]:
    """The Triton op for ``device`` and ``None``, or ``None`` and why it cannot run there.

    Looked up on each call (not bound at import) so tests can substitute the op.
    """
    try:
        from detrlab.models import msda_triton
    except ImportError as err:  # triton not installed
        return None, f"Triton is not importable ({err})"
    reason = msda_triton.unavailable_reason(device)
    return (None, reason) if reason else (msda_triton.ms_deform_attn_triton, None)


def multi_scale_deformable_attention_pytorch(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Bilinearly sample every level at the given locations and sum the samples with the given weights.

    Args:
        value: [B, S, H, Dh], the flattened levels concatenated along S (S = sum of h_l * w_l).
        spatial_shapes: (h_l, w_l) of each of the L levels, in the order they are concatenated.
        sampling_locations: [B, Q, H, L, P, 2] (x, y) in [0, 1] relative to each level's extent;
            (0, 0) is the top-left corner of the top-left cell. Points outside read zeros.
        attention_weights: [B, Q, H, L, P].

    Returns:
        [B, Q, H * Dh] (heads concatenated).
    """
    b, _, heads, head_dim = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    value_levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample's coordinate range is [-1, 1] with align_corners=False mapping -1 to the cell edge.
    grids = 2 * sampling_locations - 1
    # [B, Q, H, L, P] -> [B*H, Q, L, P, 1]
    weights = attention_weights.transpose(1, 2).reshape(b * heads, q, levels, points, 1)
    out = None
    for lvl, (h, w) in enumerate(spatial_shapes):
        # [B, h*w, H, Dh] -> [B*H, Dh, h, w]
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(b * heads, head_dim, h, w)
        # [B, Q, H, P, 2] -> [B*H, Q, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Weighted sum over the points as a batched matmul, level by level: no [.., L*P] stack and
        # no elementwise product of that size is materialised (both dominated time and memory).
        # [B*H, Q, Dh, P] @ [B*H, Q, P, 1] -> [B*H, Q, Dh]
        level_out = torch.matmul(sampled.transpose(1, 2), weights[:, :, lvl]).squeeze(-1)
        out = level_out if out is None else out + level_out
    # [B*H, Q, Dh] -> [B, Q, H*Dh]
    return out.view(b, heads, q, head_dim).transpose(1, 2).reshape(b, q, heads * head_dim)


def resolve_implementation(implementation: str, device: torch.device) -> str:
    """The path that ``implementation`` takes for tensors on ``device``: "pytorch", "compiled" or "triton".

    Raises:
        AttentionImplementationError: a forced "compiled" / "triton" with no kernel for ``device``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise AttentionImplementationError(
            f"attention_implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
        )
    if implementation == "pytorch":
        return "pytorch"
    wants_triton = implementation == "triton" or (implementation == "auto" and device.type == "cuda")
    if wants_triton:
        op, reason = triton_kernel(device)
        if op is not None:
            return "triton"
        if implementation == "triton":
            raise AttentionImplementationError(
                f"attention_implementation='triton' has no kernel for {device.type} tensors ({device}): "
                f"{reason}. Use attention_implementation=auto (Triton on CUDA, C++ on CPU) or pytorch"
            )
    if compiled_kernel() is not None and device.type in _compiled.get("devices", ()):
        return "compiled"
    if implementation == "compiled":
        from detrlab.models import msda_kernel

        why = (
            f"the ops/ extension is unavailable ({msda_kernel.unavailable_reason() or 'no kernel registered'})"
            if compiled_kernel() is None
            else f"it has kernels for {', '.join(_compiled.get('devices', ())) or 'no device'} only"
        )
        raise AttentionImplementationError(
            f"attention_implementation='compiled' has no compiled deformable-attention kernel for "
            f"{device.type} tensors ({device}): {why}. Use attention_implementation=auto, triton (CUDA) "
            "or pytorch"
        )
    return "pytorch"


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    implementation: str = "auto",
    im2col_step: int = 64,
    levels: LevelTables | None = None,
) -> Tensor:
    """Dispatch the deformable sampling to a kernel or PyTorch (see module docstring).

    Shapes as in :func:`multi_scale_deformable_attention_pytorch`; ``levels``: the device tables
    of ``spatial_shapes`` (looked up in the cache of :func:`level_tables` when ``None``). Returns
    ``[B, Q, H * Dh]`` in ``value.dtype`` (the Triton path under autocast: the autocast dtype).
    """
    device_type = value.device.type
    path = resolve_implementation(implementation, value.device)
    autocast = torch.is_autocast_enabled(device_type)
    if path == "triton":
        op, _ = triton_kernel(value.device)
        if autocast and value.dtype == torch.float32:
            # No upcast: the kernel reads the value in the autocast dtype and accumulates in fp32
            # (as autocast itself does, float64 is left alone).
            value = value.to(torch.get_autocast_dtype(device_type))
        levels = levels if levels is not None else level_tables(spatial_shapes, value.device)
        # Locations and weights in float32 whatever autocast made of them (bf16 locations lose
        # about 0.6 px on a 152-px-wide level); float64 only in the exact float64 mode.
        precise = torch.float64 if value.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=device_type, enabled=False):
            return op(
                value,
                levels.spatial_shapes,
                levels.level_start_index,
                sampling_locations.to(precise),
                attention_weights.to(precise),
            )

    out_dtype = value.dtype
    if out_dtype in (torch.float16, torch.bfloat16) or autocast:
        value, sampling_locations, attention_weights = (
            t.float() for t in (value, sampling_locations, attention_weights)
        )
    with torch.autocast(device_type=device_type, enabled=False):
        if path == "compiled":
            levels = levels if levels is not None else level_tables(spatial_shapes, value.device)
            out = compiled_kernel()(
                value,
                levels.spatial_shapes,
                levels.level_start_index,
                sampling_locations,
                attention_weights,
                im2col_step,
            )
        else:
            out = multi_scale_deformable_attention_pytorch(
                value, spatial_shapes, sampling_locations, attention_weights
            )
    return out.to(out_dtype)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``num_levels`` feature maps with ``num_points`` samples per head and level.

    Each query predicts, from its content, sampling offsets around its reference point and softmax
    weights over the ``num_levels * num_points`` samples of each head.

    Args:
        embed_dim: model width (divisible by ``num_heads``).
        num_heads: attention heads.
        num_levels: feature levels.
        num_points: sampling points per head and level.
        implementation: "auto", "pytorch", "compiled" or "triton" (see
            :func:`multi_scale_deformable_attention`).
        im2col_step: batch chunk of the compiled kernel.

    Parameter names ``sampling_offsets`` / ``attention_weights`` / ``value_proj`` / ``output_proj``
    are relied upon by the optimizer, which gives ``sampling_offsets`` a scaled learning rate.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        implementation: str = "auto",
        im2col_step: int = 64,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if implementation not in IMPLEMENTATIONS:
            raise AttentionImplementationError(
                f"attention_implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.implementation = implementation
        self.im2col_step = im2col_step
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a ring of 8 directions (one per head, spread over 2*pi), the k-th point k
        cells out; uniform attention weights; Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        # Scale so the larger of |x|, |y| is 1: the first point lands on a neighbouring cell.
        directions = directions / directions.abs().max(-1, keepdim=True).values
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        value_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to points sampled around its reference point.

        Args:
            query: [B, Q, D] (content + position).
            reference_points: [B, Q, L, 2] normalized (x, y) per level, or [B, Q, L, 4] normalized
                (cx, cy, w, h) boxes, in which case offsets are scaled by half the box size.
            value: [B, S, D], all levels flattened and concatenated (S = sum h_l * w_l).
            spatial_shapes: (h_l, w_l) per level.
            value_padding_mask: bool [B, S], True on padding (those values are zeroed).

        Returns:
            [B, Q, D].
        """
        b, q, _ = query.shape
        if sum(h * w for h, w in spatial_shapes) != value.shape[1]:
            raise ValueError(
                f"value has {value.shape[1]} tokens but spatial_shapes {list(spatial_shapes)} describe "
                f"{sum(h * w for h, w in spatial_shapes)}"
            )
        value = self.value_proj(value)
        if value_padding_mask is not None:
            # in place: the projection's fresh output is not kept by autograd (no copy of [B, S, D])
            value = value.masked_fill_(value_padding_mask[..., None], 0.0)
        value = value.view(b, -1, self.num_heads, self.embed_dim // self.num_heads)

        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(b, q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(b, q, heads, levels * points).softmax(-1)
        weights = weights.view(b, q, heads, levels, points)

        # Exported graphs keep (h, w) symbolic: no cached tables (they would fix the sizes) while exporting.
        tables = None if torch.compiler.is_exporting() else level_tables(spatial_shapes, value.device)
        locations = self._sampling_locations(reference_points, offsets, spatial_shapes, tables)
        out = multi_scale_deformable_attention(
            value, spatial_shapes, locations, weights, self.implementation, self.im2col_step, tables
        )
        return self.output_proj(out)

    @staticmethod
    def _sampling_locations(
        reference_points: Tensor,
        offsets: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        tables: LevelTables | None,
    ) -> Tensor:
        """``centre + offsets * scale`` per head, level and point: [B, Q, H, L, P, 2].

        Points (``reference_points`` [B, Q, L, 2]): the centre is the point and the offsets are in
        cells of each level, so the scale is 1 / (w_l, h_l). Boxes ([B, Q, L, 4]): the centre is the
        box centre and the scale is half the box size over the number of points.

        The centre and scale are first repeated over the points ([B * Q, 1, L * P * 2], 1/8 of the
        offsets' size), so the one fused pass over the offsets broadcasts over the heads only: a
        broadcast across the trailing (x, y) pairs of a 6-d view runs several times slower on a CPU.
        """
        b, q, heads, levels, points, _ = offsets.shape

        def per_point(t: Tensor) -> Tensor:  # [B, Q, L, 2] -> [B * Q, 1, L * P * 2]
            return t[:, :, :, None, :].expand(b, q, levels, points, 2).reshape(b * q, 1, levels * points * 2)

        if reference_points.shape[-1] == 2:
            centre = reference_points
            if tables is not None:
                normalizer = tables.offset_normalizer
            else:
                one = offsets.new_ones((), dtype=torch.float32)
                normalizer = torch.stack([torch.stack((one * w, one * h)) for h, w in spatial_shapes])
            # float32 table: the locations stay float32 under autocast
            scale = normalizer.reciprocal()[:, None, :].expand(levels, points, 2).reshape(1, 1, -1)
        elif reference_points.shape[-1] == 4:
            centre = reference_points[..., :2]
            scale = per_point(reference_points[..., 2:] * (0.5 / points))
        else:
            raise ValueError(
                f"reference_points must end in 2 (points) or 4 (boxes), got shape {tuple(reference_points.shape)}"
            )
        flat_offsets = offsets.reshape(b * q, heads, levels * points * 2)
        return torch.addcmul(per_point(centre), flat_offsets, scale).view(offsets.shape)
