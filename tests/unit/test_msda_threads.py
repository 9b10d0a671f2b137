"""The compiled kernel's loops run on torch's threads, in torch's one OpenMP runtime.

Wall-clock speedups depend on what else the machine runs (``benchmarks/kernel_threads.py`` measures
them); these tests check what does not: the CPU time each OS thread of this process spends inside one
kernel call. The loops are split statically, so with two threads each does about half the work,
however loaded the machine is; a kernel built without OpenMP leaves the second thread idle.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from detrlab.models import msda_build, msda_kernel
from tests.kernels import require_compiled_kernel

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
    reason="per-thread CPU time is read from Linux /proc; needs two CPUs",
)


@pytest.fixture(autouse=True)
def _two_threads():
    require_compiled_kernel()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _thread_cpu_ns() -> dict[str, int]:
    """Nanoseconds on CPU so far of each OS thread of this process (``schedstat``'s first field)."""
    times = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            times[task.name] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
    return times


def _busiest_thread_shares(fn, calls: int = 3) -> list[float]:
    """Shares of the CPU time spent during ``calls`` calls of ``fn()`` by the two busiest threads.

    Several calls, because the threads take chunks of work as they come: one call on a busy machine
    can leave most chunks to one thread, which is the point of taking them dynamically.
    """
    fn()  # warm-up: creates the thread team and touches the memory
    before = _thread_cpu_ns()
    for _ in range(calls):
        fn()
    after = _thread_cpu_ns()
    spent = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    total = sum(spent)
    return [s / total for s in spent[:2]]


def _encoder_like_inputs():
    g = torch.Generator().manual_seed(0)
    shapes = [(48, 48), (24, 24), (12, 12)]
    tokens, b, heads, dim, points = sum(h * w for h, w in shapes), 2, 8, 32, 4
    value = torch.randn(b, tokens, heads, dim, generator=g)
    loc = torch.rand(b, tokens, heads, len(shapes), points, 2, generator=g) * 1.1 - 0.05
    weights = torch.rand(b, tokens, heads, len(shapes), points, generator=g)
    grad = torch.randn(b, tokens, heads * dim, generator=g)
    shapes_t, starts = msda_kernel.level_tensors(shapes, value.device)
    return value, shapes_t, starts, loc, weights, grad


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_two_threads_each_do_about_half_of_the_work(which):
    value, shapes, starts, loc, weights, grad = _encoder_like_inputs()
    if which == "forward":
        shares = _busiest_thread_shares(
            lambda: torch.ops.detrlab.ms_deform_attn(value, shapes, starts, loc, weights)
        )
    else:
        shares = _busiest_thread_shares(
            lambda: torch.ops.detrlab.ms_deform_attn_backward(value, shapes, starts, loc, weights, grad)
        )
    # serial: about [1.0, 0.0]; two threads sharing the chunks on an idle machine: about [0.5, 0.5]
    assert shares[1] > 0.3, f"the second-busiest thread did {shares[1]:.0%} of the {which} work"


def test_backward_is_deterministic_with_threads():
    value, shapes, starts, loc, weights, grad = _encoder_like_inputs()
    first = torch.ops.detrlab.ms_deform_attn_backward(value, shapes, starts, loc, weights, grad)
    torch.set_num_threads(1)
    serial = torch.ops.detrlab.ms_deform_attn_backward(value, shapes, starts, loc, weights, grad)
    for threaded, one in zip(first, serial):
        assert torch.equal(threaded, one)


def test_the_kernel_shares_torchs_openmp_runtime():
    if not msda_build.threading_setup().cflags:
        pytest.skip(f"no OpenMP build here: {msda_kernel.threading_description()}")
    runtimes = msda_build.loaded_openmp_runtimes()
    assert len(runtimes) == 1, f"more than one OpenMP runtime in the process: {runtimes}"
    assert str(runtimes[0]) in msda_kernel.threading_description()
