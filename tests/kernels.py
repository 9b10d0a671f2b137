"""Which deformable-attention implementation a test runs, and proof that it ran.

Model-level tests run on both paths: ``"auto"`` (the default, which on CPU is the compiled C++
kernel) and ``"pytorch"``. Where the kernel cannot be built the compiled cases skip, except under
``DETRLAB_OPS=require`` (CI), where they fail with the build's reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from detrlab.models import msda_kernel
from detrlab.models.msda_check import kernel_calls

#: ``attention_implementation`` values for parametrized model tests: the default path and PyTorch.
ATTENTION_PATHS = [pytest.param("auto", id="compiled"), pytest.param("pytorch", id="pytorch")]


def require_compiled_kernel() -> None:
    """Skip the calling test when the kernel cannot be built here (fail under ``DETRLAB_OPS=require``)."""
    if not msda_kernel.load():  # raises KernelUnavailableError under DETRLAB_OPS=require
        pytest.skip(f"compiled deformable-attention kernel unavailable: {msda_kernel.unavailable_reason()}")


@contextlib.contextmanager
def attention_path(implementation: str) -> Iterator[None]:
    """Run the block on ``implementation`` and check that the compiled kernel ran exactly when expected.

    ``"auto"`` must reach the compiled operator (else the test would silently cover PyTorch twice);
    ``"pytorch"`` must not.
    """
    if implementation == "auto":
        require_compiled_kernel()
    with kernel_calls() as calls:
        yield
    if implementation == "pytorch":
        assert calls.forward == 0, "implementation='pytorch' ran the compiled kernel"
    else:
        assert calls.forward > 0, f"implementation={implementation!r} did not run the compiled kernel"
