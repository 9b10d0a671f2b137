"""The Triton op as torch.compile sees it: AOTAutograd decomposes it into the three kernel launches.

This needs the compiled (not interpreted) kernel objects, so it runs in a subprocess without
``TRITON_INTERPRET``, on fake CUDA tensors (no GPU is needed to trace). Under the interpreter
``torch.compile`` of the op is not possible: ``wrap_triton`` hands interpreted kernels back
unwrapped, so tracing would launch them on fake tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import torch
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    from detrlab.models import msda_triton

    def step(value, shapes, starts, loc, weights, grad_out):
        out = msda_triton.ms_deform_attn_triton(value, shapes, starts, loc, weights)
        grads = torch.ops.detrlab.msda_triton_backward(value, shapes, starts, loc, weights, grad_out, True)
        return (out, *grads)

    graphs = []
    with FakeTensorMode():
        cuda = dict(device="cuda")
        value = torch.randn(2, 26, 2, 8, dtype=torch.bfloat16, **cuda)
        loc, weights = torch.rand(2, 5, 2, 2, 3, 2, **cuda), torch.rand(2, 5, 2, 2, 3, **cuda)
        shapes = torch.zeros(2, 2, dtype=torch.long, **cuda)
        starts = torch.zeros(2, dtype=torch.long, **cuda)
        grad_out = torch.randn(2, 5, 16, dtype=torch.bfloat16, **cuda)
        outs = aot_function(step, fw_compiler=lambda gm, _: graphs.append(gm) or gm)(
            value, shapes, starts, loc, weights, grad_out
        )
    code = graphs[0].code
    print("launches", code.count("triton_kernel_wrapper_functional("))
    print("dtypes", [str(t.dtype) for t in outs])
    """
)


@pytest.mark.slow
def test_aot_autograd_sees_the_forward_backward_and_deterministic_kernels():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "launches 3" in done.stdout
    assert "dtypes ['torch.bfloat16', 'torch.bfloat16', 'torch.float32', 'torch.float32']" in done.stdout
