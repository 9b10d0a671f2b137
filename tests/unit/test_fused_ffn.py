"""The fused feed-forward block (in-place ReLU, optional recomputation) changes memory, not results."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from detrlab.models import fused_ffn
from detrlab.models.deformable_layers import ResidualFeedForward
from detrlab.models.deformable_transformer import DeformableTransformer
from detrlab.models.fused_ffn import chunked_residual_linear_relu_linear


def _saved_bytes(fn):
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def _composed(module: ResidualFeedForward, x):
    """The block written with autograd's own operations (the reference)."""
    hidden = F.dropout(module.linear1(x).relu(), module.dropout1.p, training=True)
    return module.norm(x + F.dropout(module.linear2(hidden), module.dropout2.p, training=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("recompute", [False, True])
def test_same_outputs_and_gradients_as_the_composed_block(dtype, dropout, recompute):
    torch.manual_seed(0)
    reference = ResidualFeedForward(16, 128, dropout).to(dtype).train()
    fused = copy.deepcopy(reference)
    fused.recompute_hidden = recompute
    x = torch.randn(2, 50, 16, dtype=dtype)
    results = []
    for run in (lambda i: _composed(reference, i), lambda i: fused(i)):
        inputs = x.clone().requires_grad_()
        torch.manual_seed(1)  # same dropout masks
        out, saved = _saved_bytes(lambda i=inputs, f=run: f(i))
        out.square().sum().backward()
        module = reference if len(results) == 0 else fused
        grads = [inputs.grad] + [p.grad for p in module.parameters()]
        results.append((out.detach(), grads, saved))
    (out_a, grads_a, saved_a), (out_b, grads_b, saved_b) = results
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(out_b, out_a, **tol)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, **tol)
    hidden_bytes = 2 * 50 * 128 * x.element_size()
    if recompute:  # at least one hidden-sized tensor [2, 50, 128] is no longer kept
        assert saved_b <= saved_a - hidden_bytes // 2
    else:  # the same activations; the fused function also references linear1's bias (a parameter)
        assert saved_b <= saved_a + 128 * x.element_size()


@pytest.mark.parametrize("recompute", [False, True])
def test_gradcheck(recompute):
    torch.manual_seed(0)
    module = ResidualFeedForward(4, 8, 0.0).double().train()
    module.recompute_hidden = recompute
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_transformer_marks_the_first_layers_and_checks_the_count():
    transformer = DeformableTransformer(d_model=32, nhead=2, num_encoder_layers=3, encoder_ffn_recompute=2)
    assert [layer.ffn.recompute_hidden for layer in transformer.encoder.layers] == [True, True, False]
    # a count above the depth means every layer (a shrunk encoder keeps its config working)
    deeper = DeformableTransformer(d_model=32, nhead=2, num_encoder_layers=3, encoder_ffn_recompute=4)
    assert [layer.ffn.recompute_hidden for layer in deeper.encoder.layers] == [True, True, True]
    with pytest.raises(ValueError, match=r"encoder_ffn_recompute counts encoder layers and must be >= 0"):
        DeformableTransformer(d_model=32, nhead=2, num_encoder_layers=3, encoder_ffn_recompute=-1)


def _composed_residual(x, linear1, linear2):
    return x + linear2(linear1(x).relu())


@pytest.mark.parametrize("rows", [7, 50, 64])
def test_row_chunks_equal_the_composed_block_in_value_and_every_gradient(rows):
    # 50 tokens in blocks of 7 (a short last block), one block exactly, one block larger than the input
    torch.manual_seed(0)
    linear1, linear2 = torch.nn.Linear(16, 96).double(), torch.nn.Linear(96, 16).double()
    x = torch.randn(2, 25, 16, dtype=torch.float64)
    grad = torch.randn(2, 25, 16, dtype=torch.float64)
    results = []
    for run in (
        lambda i: _composed_residual(i, linear1, linear2),
        lambda i: chunked_residual_linear_relu_linear(i, linear1, linear2, rows=rows),
    ):
        inputs = x.clone().requires_grad_()
        for p in (*linear1.parameters(), *linear2.parameters()):
            p.grad = None
        out = run(inputs)
        out.backward(grad)
        results.append(
            [
                out.detach(),
                inputs.grad,
                *(p.grad.clone() for p in (*linear1.parameters(), *linear2.parameters())),
            ]
        )
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


def test_row_chunks_gradcheck_and_keep_no_hidden_activation():
    torch.manual_seed(0)
    linear1, linear2 = torch.nn.Linear(4, 32).double(), torch.nn.Linear(32, 4).double()
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda i: chunked_residual_linear_relu_linear(i, linear1, linear2, rows=4), (x,)
    )
    _, saved = _saved_bytes(lambda: chunked_residual_linear_relu_linear(x, linear1, linear2, rows=4))
    parameters = sum(p.numel() for p in (linear1.weight, linear1.bias, linear2.weight)) * 8
    assert saved == x.numel() * 8 + parameters  # the input and the weights: no [9, 32] tensor


def test_residual_block_uses_row_chunks_for_large_cpu_inputs_only(monkeypatch):
    torch.manual_seed(0)
    block = ResidualFeedForward(16, 64, 0.0).train()
    x = torch.randn(2, 40, 16)
    hidden_bytes = 2 * 40 * 64 * 4
    calls = []
    original = fused_ffn._ChunkedResidualLinearReLULinear.apply

    def counting(*args):
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr(fused_ffn._ChunkedResidualLinearReLULinear, "apply", counting)
    expected = block.norm(_composed_residual(x, block.linear1, block.linear2))
    monkeypatch.setattr(fused_ffn, "CHUNK_THRESHOLD_BYTES", hidden_bytes)  # not above: whole
    torch.testing.assert_close(block(x), expected)
    assert calls == []
    monkeypatch.setattr(fused_ffn, "CHUNK_THRESHOLD_BYTES", hidden_bytes - 1)
    monkeypatch.setattr(fused_ffn, "CHUNK_BYTES", 64 * 4 * 24)  # 24 rows per block
    torch.testing.assert_close(block(x), expected)
    with torch.no_grad():
        torch.testing.assert_close(block.eval()(x), expected)
    assert calls == [24, 24]
    # dropout in training needs the plain path (its masks), autocast keeps its own dtype handling
    dropping = ResidualFeedForward(16, 64, 0.1).train()
    dropping(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block.train()(x)
    assert calls == [24, 24]
    assert not fused_ffn.wants_row_chunks(x.to("meta"), 64)
