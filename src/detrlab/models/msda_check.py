"""``python -m detrlab.models.msda_kernel [--check]``: build the compiled kernel, or prove it runs.

Without arguments the command builds (or finds cached) and loads the extension, for example while
building a container image. ``--check`` then runs one forward of a deformable-attention layer with
the default ``implementation="auto"`` and reports which implementation actually ran, the loaded
library, the sources it was built from and its threading; the exit status is 0 only when the
compiled kernel ran. CI runs it from a wheel installed outside the source tree.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import detrlab
import detrlab_ops
from detrlab.errors import DetrlabError
from detrlab.models import msda_kernel

__all__ = ["KernelCalls", "kernel_calls", "main", "run_check"]

FORWARD_OP = "detrlab::ms_deform_attn"


class KernelCalls(TorchDispatchMode):
    """Counts the compiled forward operator's calls while active (``forward``), whoever calls it.

    A dispatch mode sees every operator below autograd, so the count does not depend on which
    Python function dispatched to the kernel.
    """

    def __init__(self) -> None:
        super().__init__()
        self.forward = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name == FORWARD_OP:  # the operator, whatever its overload; not the backward
            self.forward += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def kernel_calls() -> Iterator[KernelCalls]:
    """``with kernel_calls() as calls: ...`` then ``calls.forward`` is the compiled forward's call count."""
    with KernelCalls() as calls:
        yield calls


def _instruction_set_description() -> str:
    from detrlab.models import msda_build

    isa = msda_build.instruction_set()
    return f"{isa.name} ({' '.join(isa.cflags)})" if isa.name else "the compiler's default target"


def run_check() -> tuple[bool, list[str]]:
    """One deformable-attention forward on CPU with the default dispatch; (compiled kernel ran, report)."""
    from detrlab.models.deformable_attention import MultiScaleDeformableAttention

    loaded = msda_kernel.load()
    torch.manual_seed(0)
    shapes = [(8, 10), (4, 5)]
    layer = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=2).eval()
    query, reference_points = torch.randn(1, 6, 32), torch.rand(1, 6, 2, 2)
    value = torch.randn(1, sum(h * w for h, w in shapes), 32)
    with torch.no_grad(), kernel_calls() as calls:
        out = layer(query, reference_points, value, shapes)
    compiled = calls.forward > 0 and bool(torch.isfinite(out).all())
    report = [
        f"implementation: {'compiled' if compiled else 'pytorch'} "
        f"({FORWARD_OP} ran {calls.forward} time(s) in one forward of {type(layer).__name__})",
        f"library: {msda_kernel.library_path() if loaded else 'not loaded'}",
        f"sources: {msda_kernel.sources_dir()}",
        f"threading: {msda_kernel.threading_description()}; torch threads: {torch.get_num_threads()}",
        f"instructions: {_instruction_set_description()}",
        f"packages: detrlab {Path(detrlab.__file__).parent}, detrlab_ops {Path(detrlab_ops.__file__).parent}",
    ]
    if not loaded:
        report.append(f"unavailable because: {msda_kernel.unavailable_reason()}")
    return compiled, report


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m detrlab.models.msda_kernel",
        description="Build the compiled deformable-attention kernel (first use; cached afterwards).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="also run one deformable forward and exit 1 unless the compiled kernel ran",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if not args.check:
            if not msda_kernel.load(verbose=True):
                print(f"build failed: {msda_kernel.unavailable_reason()}")
                return 1
            devices = ", ".join(msda_kernel.supported_devices())
            print(f"{msda_kernel.EXTENSION_NAME}: built and loaded; kernels for {devices}")
            print(f"library: {msda_kernel.library_path()}")
            print(f"threading: {msda_kernel.threading_description()}")
            print(f"instructions: {_instruction_set_description()}")
            return 0
        compiled, report = run_check()
    except DetrlabError as err:
        print(f"error: {err}")
        return 1
    print("\n".join(report))
    return 0 if compiled else 1
