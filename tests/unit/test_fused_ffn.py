"""The fused feed-forward block (in-place ReLU, optional recomputation) changes memory, not results."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from detrlab.models.deformable_layers import ResidualFeedForward
from detrlab.models.deformable_transformer import DeformableTransformer


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
