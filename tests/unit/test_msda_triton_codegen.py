"""The Triton kernels as the GPU toolchain sees them, checked without a GPU.

* The kernels compile to PTX for the H200's target (sm_90) in every value dtype: code generation
  errors that the interpreter cannot see (it runs the Python source) show up here.
* ``torch.compile``'s view of the op: AOTAutograd decomposes it into the three kernel launches.
  Under the interpreter this is not possible (``wrap_triton`` hands interpreted kernels back
  unwrapped, so tracing would launch them on fake tensors), so it runs on fake CUDA tensors.

Both need the compiled (not interpreted) kernel objects, so they run in a subprocess without
``TRITON_INTERPRET``. Slow (tens of seconds of compilation on two cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

COMPILE_SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from detrlab_ops import msda_triton as kernels

    sizes = dict(NUM_HEADS=8, HEAD_DIM=32, NUM_LEVELS=5, NUM_POINTS=4, BLOCK_Q=64, BLOCK_D=32)
    for value_type in ("fp32", "bf16", "fp16"):
        pointers = dict(
            value_ptr=value_type, out_ptr=value_type, grad_out_ptr=value_type, shapes_ptr="i64",
            starts_ptr="i64", loc_ptr="fp32", weight_ptr="fp32", grad_value_ptr="fp32",
            grad_loc_ptr="fp32", grad_weight_ptr="fp32",
        )
        for kernel, flags in (
            (kernels.msda_forward_kernel, {}),
            (kernels.msda_backward_kernel, {"ACCUMULATE_GRAD_VALUE": True}),
            (kernels.msda_grad_value_deterministic_kernel, {}),
        ):
            names = kernel.arg_names
            signature = {
                n: "*" + pointers[n] if n in pointers else "i32" if n.startswith("num_") else "constexpr"
                for n in names
            }
            constants = {n: v for n, v in {**sizes, **flags}.items() if n in names}
            compiled = triton.compile(
                ASTSource(fn=kernel, signature=signature, constexprs=constants),
                target=GPUTarget("cuda", 90, 32),
            )
            assert ".target sm_90" in compiled.asm["ptx"]
            print("compiled", value_type, kernel.fn.__name__, len(compiled.asm["ptx"]))
    """
)

TRACE_SCRIPT = textwrap.dedent(
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


def _run_without_interpreter(script: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_kernels_compile_for_the_h200_target_in_every_value_dtype():
    compiled = [line.split() for line in _run_without_interpreter(COMPILE_SCRIPT).splitlines()]
    assert len(compiled) == 9
    # levels and points are loops, not unrolled: the PTX stays small and compiles in seconds
    assert all(int(size) < 1_000_000 for *_, size in compiled)


@pytest.mark.slow
def test_aot_autograd_sees_the_forward_backward_and_deterministic_kernels():
    stdout = _run_without_interpreter(TRACE_SCRIPT)
    assert "launches 3" in stdout
    assert "dtypes ['torch.bfloat16', 'torch.bfloat16', 'torch.float32', 'torch.float32']" in stdout
