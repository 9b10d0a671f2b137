"""The autograd formula shared by the deformable-attention operators (C++ and Triton).

Both forward operators take ``(value, spatial_shapes, level_start_index, sampling_locations,
attention_weights)`` and are differentiable in the value, the locations and the weights; the level
tables are integer tensors without gradients. Each operator supplies only its backward kernel.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, library

__all__ = ["register_deformable_autograd"]

# (value, shapes, starts, locations, weights, grad_output) -> (grad_value, grad_locations, grad_weights)
BackwardKernel = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def register_deformable_autograd(forward_op: str, backward_kernel: BackwardKernel) -> None:
    """Register the autograd formula of ``forward_op`` (e.g. ``"detrlab::ms_deform_attn"``).

    The forward saves its five inputs; backward calls ``backward_kernel`` with them and the output
    gradient ``[B, Q, H * Dh]`` and returns the gradients the caller asked for.
    """

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_output: Tensor):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = backward_kernel(
            value, shapes, starts, locations, weights, grad_output
        )
        needs = ctx.needs_input_grad
        return (
            grad_value if needs[0] else None,
            None,
            None,
            grad_locations if needs[3] else None,
            grad_weights if needs[4] else None,
        )

    library.register_autograd(forward_op, backward, setup_context=setup_context)
