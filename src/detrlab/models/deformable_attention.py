"""Multi-scale deformable attention: each query attends to a few sampled points on every feature level.

The sampling itself (bilinear interpolation of the values at fractional locations, weighted sum over
levels and points) goes through :func:`multi_scale_deformable_attention`, the one dispatch point
between the pure-PyTorch implementation below and a compiled kernel:

* ``"pytorch"``: :func:`multi_scale_deformable_attention_pytorch` (``F.grid_sample``; exact,
  differentiable, any device and dtype).
* ``"compiled"``: the C++ extension built from ``ops/csrc`` (see :mod:`detrlab.models.msda_kernel`;
  built just in time on first use and cached), or a kernel installed with
  :func:`register_compiled_kernel`.
* ``"auto"`` (default): the compiled kernel when it is available for the tensors' device, else
  PyTorch (with a one-line notice when the extension cannot be built).

Under autocast the sampling runs in float32 (bilinear weights lose precision in fp16) and the
result is cast back to the value's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MultiScaleDeformableAttention",
    "compiled_kernel",
    "multi_scale_deformable_attention",
    "multi_scale_deformable_attention_pytorch",
    "register_compiled_kernel",
]

IMPLEMENTATIONS = ("auto", "pytorch", "compiled")

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


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    implementation: str = "auto",
    im2col_step: int = 64,
) -> Tensor:
    """Dispatch the deformable sampling to the compiled kernel or PyTorch (see module docstring).

    Shapes as in :func:`multi_scale_deformable_attention_pytorch`; returns ``[B, Q, H * Dh]`` in
    ``value.dtype``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    kernel = compiled_kernel() if implementation != "pytorch" else None
    if implementation == "compiled" and kernel is None:
        raise RuntimeError(
            "implementation='compiled' but no compiled deformable-attention kernel is available (the ops/ "
            "extension could not be built, see the logged notice): use implementation='auto'/'pytorch'"
        )
    use_kernel = kernel is not None and (
        implementation == "compiled" or value.device.type in _compiled.get("devices", ())
    )

    out_dtype = value.dtype
    needs_fp32 = out_dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(value.device.type)
    if needs_fp32:
        value, sampling_locations, attention_weights = (
            t.float() for t in (value, sampling_locations, attention_weights)
        )
    with torch.autocast(device_type=value.device.type, enabled=False):
        if use_kernel:
            shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=value.device)
            start = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
            out = kernel(value, shapes, start, sampling_locations, attention_weights, im2col_step)
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
        implementation: "auto", "pytorch" or "compiled" (see :func:`multi_scale_deformable_attention`).
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
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
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
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(b, -1, self.num_heads, self.embed_dim // self.num_heads)

        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(b, q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(b, q, heads, levels * points).softmax(-1)
        weights = weights.view(b, q, heads, levels, points)

        if reference_points.shape[-1] == 2:
            # Offsets are in cells of each level: divide by that level's (w, h).
            # Built from tensor ops, not torch.tensor(), so that exported graphs keep (h, w) symbolic.
            one = offsets.new_ones(())
            normalizer = torch.stack([torch.stack((one * w, one * h)) for h, w in spatial_shapes])
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            centre = reference_points[:, :, None, :, None, :2]
            size = reference_points[:, :, None, :, None, 2:]
            locations = centre + offsets / points * size * 0.5
        else:
            raise ValueError(
                f"reference_points must end in 2 (points) or 4 (boxes), got shape {tuple(reference_points.shape)}"
            )
        out = multi_scale_deformable_attention(
            value, spatial_shapes, locations, weights, self.implementation, self.im2col_step
        )
        return self.output_proj(out)
