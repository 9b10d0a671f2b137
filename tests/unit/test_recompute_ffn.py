"""Recomputing the encoder FFN's hidden activation changes memory, not results."""

from __future__ import annotations

import copy

import pytest
import torch

from detrlab.models.deformable_layers import FeedForward
from detrlab.models.deformable_transformer import DeformableTransformer


def _saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_same_outputs_and_gradients_with_less_saved_memory(dtype, dropout):
    torch.manual_seed(0)
    plain = FeedForward(16, 128, dropout).to(dtype).train()
    recomputed = copy.deepcopy(plain)
    recomputed.recompute_hidden = True
    x = torch.randn(2, 50, 16, dtype=dtype)
    results = []
    for module in (plain, recomputed):
        inputs = x.clone().requires_grad_()
        torch.manual_seed(1)  # same dropout masks
        out, saved = _saved_bytes(lambda m=module, i=inputs: m(i))
        out.square().sum().backward()
        grads = [inputs.grad] + [p.grad for p in module.parameters()]
        results.append((out.detach(), grads, saved))
    (out_a, grads_a, saved_a), (out_b, grads_b, saved_b) = results
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(out_b, out_a, **tol)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, **tol)
    # at least one hidden-sized tensor [2, 50, 128] is no longer kept (with dropout: more)
    hidden_bytes = 2 * 50 * 128 * x.element_size()
    assert saved_b <= saved_a - hidden_bytes // 2


def test_gradcheck_of_the_recomputing_function():
    torch.manual_seed(0)
    module = FeedForward(4, 8, 0.0).double().train()
    module.recompute_hidden = True
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_transformer_marks_the_first_layers_and_checks_the_count():
    transformer = DeformableTransformer(d_model=32, nhead=2, num_encoder_layers=3, encoder_ffn_recompute=2)
    assert [layer.ffn.recompute_hidden for layer in transformer.encoder.layers] == [True, True, False]
    with pytest.raises(ValueError, match=r"encoder_ffn_recompute must be in 0\.\.num_encoder_layers=3"):
        DeformableTransformer(d_model=32, nhead=2, num_encoder_layers=3, encoder_ffn_recompute=4)
