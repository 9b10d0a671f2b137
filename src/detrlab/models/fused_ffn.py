"""Linear -> ReLU -> Linear as autograd functions: in-place activation, recomputation, row chunks.

In the deformable encoder the feed-forward hidden activation (``[B, S, dim_feedforward]``, 8x the
width of the tokens) is the largest tensor of a training step: about 107 MiB per layer for DETA-R50
at 512x640, batch 2. Autograd's composition of ``linear``, ``relu`` and ``linear`` allocates it
twice (pre- and post-activation) and allocates a third hidden-sized tensor in ReLU's backward; on a
CPU the page faults of those fresh allocations cost as much as the arithmetic. Two functions avoid
that, with the same results:

* :func:`linear_relu_linear` applies ReLU in place and masks the gradient in place. With
  ``recompute=True`` it keeps only its input for backward and recomputes ``relu(linear1(x))`` there
  (one extra ``linear1``, no second ``linear2`` as whole-block checkpointing would do).
* :func:`chunked_residual_linear_relu_linear` (CPU) computes ``x + linear2(relu(linear1(x)))`` a block
  of rows at a time, so the hidden activation only ever exists as one block that stays in the
  processor's cache and is reused for every block; backward recomputes each block's hidden
  activation the same way. It keeps only ``x`` for backward, and for encoder-sized inputs it is
  faster than keeping the hidden activation (see :data:`CHUNK_THRESHOLD_BYTES`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_THRESHOLD_BYTES",
    "chunked_residual_linear_relu_linear",
    "linear_relu_linear",
    "wants_row_chunks",
]

# glibc serves every allocation above 32 MiB (its largest mmap threshold) with fresh pages from the
# kernel and returns them on free, so a hidden activation that large page-faults on every step; below
# it, freed blocks are reused. Above this size the CPU path computes in row blocks instead.
CHUNK_THRESHOLD_BYTES = 32 << 20
# One block of the hidden activation: 16 MiB (2048 rows of 2048 fp32 units). With its gradient in
# backward that is 32 MiB, the last-level cache of a typical server CPU; measured fastest among
# 512..4096 rows for DETA-R50's encoder on a 2-core AMD EPYC (DECISIONS.md).
CHUNK_BYTES = 16 << 20


def _relu_gradient_(grad_hidden: Tensor, hidden: Tensor) -> Tensor:
    """ReLU's derivative applied in place: ``grad_hidden`` zeroed where ``hidden`` (the activation
    after ReLU) is not positive. One pass, no boolean mask tensor."""
    return torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0, grad_input=grad_hidden)


class _LinearReLULinear(torch.autograd.Function):
    """``linear2(relu(linear1(x)))``; saves the hidden activation, or with ``recompute`` only ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, recompute: bool) -> Tensor:
        hidden = F.linear(x, w1, b1).relu_()
        ctx.recompute = recompute
        ctx.save_for_backward(x, w1, b1, w2, None if recompute else hidden)
        return F.linear(hidden, w2, b2)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, w1, b1, w2, hidden = ctx.saved_tensors
        if ctx.recompute:
            hidden = F.linear(x, w1, b1).relu_()
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        grad_w2 = flat_grad.t() @ flat_hidden
        grad_b2 = flat_grad.sum(0)
        grad_hidden = _relu_gradient_(grad_out @ w2, hidden)
        del hidden, flat_hidden
        flat_grad_hidden = grad_hidden.reshape(-1, grad_hidden.shape[-1])
        grad_w1 = flat_grad_hidden.t() @ x.reshape(-1, x.shape[-1])
        grad_b1 = flat_grad_hidden.sum(0)
        grad_x = grad_hidden @ w1
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None


class _ChunkedResidualLinearReLULinear(torch.autograd.Function):
    """``x + linear2(relu(linear1(x)))`` over blocks of ``rows`` rows; saves only ``x`` and the weights.

    Every block's hidden activation ``[rows, F]`` is written into one reused buffer (and, in backward,
    its gradient into a second one), so no ``[N, F]`` tensor is ever allocated.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, rows: int) -> Tensor:
        flat_x = x.reshape(-1, x.shape[-1])
        out = torch.empty_like(flat_x)
        hidden_buffer = flat_x.new_empty(min(rows, flat_x.shape[0]), w1.shape[0])
        w1_t, w2_t = w1.t(), w2.t()
        for start in range(0, flat_x.shape[0], rows):
            x_block = flat_x[start : start + rows]
            block_out = out[start : start + rows]
            hidden = torch.addmm(b1, x_block, w1_t, out=hidden_buffer[: x_block.shape[0]]).relu_()
            torch.addmm(b2, hidden, w2_t, out=block_out).add_(x_block)
        ctx.rows = rows
        ctx.save_for_backward(x, w1, b1, w2)
        return out.view_as(x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, w1, b1, w2 = ctx.saved_tensors
        rows = ctx.rows
        flat_x = x.reshape(-1, x.shape[-1])
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = torch.empty_like(flat_x) if ctx.needs_input_grad[0] else None
        grad_w1, grad_b1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2)
        hidden_buffer = flat_x.new_empty(min(rows, flat_x.shape[0]), w1.shape[0])
        grad_hidden_buffer = torch.empty_like(hidden_buffer)
        w1_t = w1.t()
        for start in range(0, flat_x.shape[0], rows):
            x_block = flat_x[start : start + rows]
            grad_block = flat_grad[start : start + rows]
            n = x_block.shape[0]
            hidden = torch.addmm(b1, x_block, w1_t, out=hidden_buffer[:n]).relu_()
            grad_w2.addmm_(grad_block.t(), hidden)
            grad_hidden = _relu_gradient_(torch.mm(grad_block, w2, out=grad_hidden_buffer[:n]), hidden)
            grad_w1.addmm_(grad_hidden.t(), x_block)
            grad_b1 += grad_hidden.sum(0)
            if grad_x is not None:
                # the residual's gradient is grad_out itself
                torch.addmm(grad_block, grad_hidden, w1, out=grad_x[start : start + n])
        grad_x = grad_x.view_as(x) if grad_x is not None else None
        return grad_x, grad_w1, grad_b1, grad_w2, flat_grad.sum(0), None


def wants_row_chunks(x: Tensor, hidden_features: int) -> bool:
    """Whether :func:`chunked_residual_linear_relu_linear` is the faster way for ``x``: a CPU tensor
    (without autocast) whose hidden activation would exceed :data:`CHUNK_THRESHOLD_BYTES`. Never while
    tracing (``torch.compile``, ONNX export): a loop over a traced size would fix that size."""
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False
    return x.numel() // x.shape[-1] * hidden_features * x.element_size() > CHUNK_THRESHOLD_BYTES


def chunked_residual_linear_relu_linear(
    x: Tensor, linear1: torch.nn.Linear, linear2: torch.nn.Linear, rows: int | None = None
) -> Tensor:
    """``x + linear2(relu(linear1(x)))`` computed in blocks of rows (no dropout).

    Args:
        x: [..., d_model].
        linear1, linear2: the two projections (with biases).
        rows: rows per block; default: as many as fit in :data:`CHUNK_BYTES` of hidden activation.

    Returns:
        [..., d_model], differentiable in ``x`` and the four parameters; backward recomputes the
        hidden activation block by block.
    """
    hidden_features = linear1.out_features
    if rows is None:
        rows = max(1, CHUNK_BYTES // (hidden_features * x.element_size()))
    return _ChunkedResidualLinearReLULinear.apply(
        x, linear1.weight, linear1.bias, linear2.weight, linear2.bias, rows
    )


def linear_relu_linear(
    x: Tensor, linear1: torch.nn.Linear, linear2: torch.nn.Linear, dropout: float, recompute: bool = False
) -> Tensor:
    """``linear2(dropout(relu(linear1(x))))`` for training.

    Args:
        x: [..., d_model].
        linear1, linear2: the two projections (with biases).
        dropout: the hidden dropout probability (applied: this is the training path).
        recompute: keep only ``x`` for backward and recompute the hidden activation there.

    Returns:
        [..., d_model]. Without dropout and autocast the fused autograd function runs; otherwise the
        plain composition, checkpointed as a whole with ``recompute`` (the RNG state is replayed,
        so dropout masks match).
    """
    if dropout == 0.0 and not torch.is_autocast_enabled(x.device.type):
        return _LinearReLULinear.apply(
            x, linear1.weight, linear1.bias, linear2.weight, linear2.bias, recompute
        )

    def block(inputs: Tensor) -> Tensor:
        return linear2(F.dropout(linear1(inputs).relu(), dropout, training=True))

    return checkpoint(block, x, use_reentrant=False) if recompute else block(x)
