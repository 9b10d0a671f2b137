"""The compiled multi-scale deformable attention kernel (C++ sources in ``ops/csrc``).

The extension is built just in time with :func:`torch.utils.cpp_extension.load` on first use and
cached by PyTorch (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), so the
ordinary ``pip install`` is the whole install. The sources ship inside the installed package
(``detrlab_ops``), so a wheel builds the kernel like a source checkout does. The loops are threaded
with torch's own OpenMP runtime (see :mod:`detrlab.models.msda_build`). Building ahead of time (for
example in a container image) is ``python -m detrlab.models.msda_kernel``; ``--check`` also runs one
deformable forward and reports which implementation ran (exit status 1 unless it was this kernel).

The library defines two operators with ``TORCH_LIBRARY``: ``detrlab::ms_deform_attn`` and
``detrlab::ms_deform_attn_backward``. This module registers the autograd formula of the first (its
backward calls the second) and fake (meta) implementations of both, so the op works under
``torch.compile`` and ``torch.export``.

Environment:

* ``DETRLAB_OPS``: unset or ``1``: use the kernel when it builds, else log a one-line notice and use
  the PyTorch path; ``require``: a failed build or load raises
  :class:`~detrlab.errors.KernelUnavailableError` with the build's reason (for CI and benchmarks);
  ``0``: never build, always use the PyTorch path.
* ``DETRLAB_OPS_SOURCES`` overrides the folder of C++ sources (the default is ``csrc/`` of the
  installed ``detrlab_ops`` package, i.e. ``ops/csrc`` in a source checkout and inside the wheel).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, library

from detrlab.errors import ConfigError, KernelUnavailableError
from detrlab.models.msda_autograd import register_deformable_autograd

log = logging.getLogger(__name__)

__all__ = [
    "EXTENSION_NAME",
    "library_path",
    "load",
    "mode",
    "ms_deform_attn",
    "sources_dir",
    "supported_devices",
    "threading_description",
    "unavailable_reason",
]

EXTENSION_NAME = "detrlab_msda"
_OP = "detrlab::ms_deform_attn"
_MODES = {"1": "auto", "": "auto", "0": "off", "require": "require"}
_state: dict[str, object] = {}


def mode() -> str:
    """``"auto"``, ``"require"`` or ``"off"``, from ``$DETRLAB_OPS`` (unset means ``"auto"``)."""
    raw = os.environ.get("DETRLAB_OPS", "1").strip().lower()
    if raw not in _MODES:
        raise ConfigError(
            f"DETRLAB_OPS={raw!r} is not a setting of the compiled deformable-attention kernel: use 1 "
            "(default: the kernel when it builds, else PyTorch), require (a failed build is an error) "
            "or 0 (always the PyTorch path)"
        )
    return _MODES[raw]


def sources_dir() -> Path:
    """The folder holding the C++ sources: ``$DETRLAB_OPS_SOURCES``, else ``csrc/`` of ``detrlab_ops``."""
    env = os.environ.get("DETRLAB_OPS_SOURCES")
    if env:
        return Path(env)
    import detrlab_ops

    return detrlab_ops.csrc_dir()


def _has_kernel(dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(_OP, dispatch_key)
    except RuntimeError:  # the operator is not defined (library not loaded)
        return False


def _op_registered() -> bool:
    return _has_kernel("CPU") or _has_kernel("CUDA")


def _try_load(verbose: bool) -> str | None:
    """Build and load the library; ``None`` on success, else the reason it is unavailable."""
    from detrlab.models import msda_build

    try:
        if not _op_registered():
            path, threading = msda_build.build_extension(EXTENSION_NAME, sources_dir(), verbose)
            _state["library"], _state["threading"] = path, threading.description
        if not _op_registered():
            return f"the library loaded but does not define {_OP}"
    except Exception as err:  # compiler, linker and loader errors all mean "no kernel": reported below
        return msda_build.build_failure_summary(err)
    return None


def load(verbose: bool = False) -> bool:
    """Build (first time) and load the extension; ``True`` when the operators are available.

    Raises:
        KernelUnavailableError: with ``DETRLAB_OPS=require``, when the build or load failed.
    """
    current = mode()
    if "ok" not in _state:
        reason = "disabled by DETRLAB_OPS=0" if current == "off" else _try_load(verbose)
        _state["ok"], _state["reason"] = reason is None, reason
        if reason is None:
            _register_python_side()
        elif current != "require":
            # one line: the first reason line is the first compiler error
            first = " ".join(line.strip() for line in reason.splitlines()[:2])
            log.warning(
                "detrlab: compiled deformable-attention kernel unavailable (%s); using the PyTorch path",
                first,
            )
    if not _state["ok"] and current == "require":
        raise KernelUnavailableError(
            "DETRLAB_OPS=require but the compiled deformable-attention kernel is unavailable (sources: "
            f"{sources_dir()}):\n{_state['reason']}\nInstall a C++ compiler and ninja, fix the sources, "
            "or unset DETRLAB_OPS to allow the PyTorch path."
        )
    return bool(_state["ok"])


def unavailable_reason() -> str | None:
    """Why :func:`load` failed (``None`` when it succeeded or was not called)."""
    return _state.get("reason")  # type: ignore[return-value]


def library_path() -> Path | None:
    """The shared library of the kernel once loaded (``None`` before, or when it was loaded elsewhere)."""
    if "library" in _state:
        return _state["library"]  # type: ignore[return-value]
    for path in torch.ops.loaded_libraries:
        if Path(path).name.startswith(EXTENSION_NAME):
            return Path(path)
    return None


def threading_description() -> str:
    """How the kernel's loops are threaded (OpenMP runtime, or serial), as its build was set up."""
    if "threading" in _state:
        return str(_state["threading"])
    from detrlab.models import msda_build

    return msda_build.threading_setup().description


def supported_devices() -> tuple[str, ...]:
    """Device types the loaded library has kernels for."""
    return tuple(d for d in ("cpu", "cuda") if _has_kernel(d.upper()))


def _register_python_side() -> None:
    if _state.get("registered"):
        return

    @library.register_fake("detrlab::ms_deform_attn")
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_loc, attn_weight):
        b, _, heads, dim = value.shape
        return value.new_empty(b, sampling_loc.shape[1], heads * dim)

    @library.register_fake("detrlab::ms_deform_attn_backward")
    def _backward_fake(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output):
        return torch.empty_like(value), torch.empty_like(sampling_loc), torch.empty_like(attn_weight)

    def backward_kernel(value, shapes, starts, locations, weights, grad_output):
        return torch.ops.detrlab.ms_deform_attn_backward(
            value, shapes, starts, locations, weights, grad_output.contiguous()
        )

    register_deformable_autograd("detrlab::ms_deform_attn", backward_kernel)
    _state["registered"] = True


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
) -> Tensor:
    """The compiled sampling, differentiable in value, locations and weights.

    Shapes as in :func:`detrlab.models.deformable_attention.multi_scale_deformable_attention_pytorch`
    with ``spatial_shapes`` int64 [L, 2] and ``level_start_index`` int64 [L]; returns [B, Q, H * Dh].
    Half-precision inputs are computed in float32 and returned in their dtype. ``im2col_step`` is
    accepted for signature compatibility and unused (the kernels need no batch chunking).
    """
    del im2col_step
    if not load():
        raise RuntimeError(f"the deformable-attention extension is unavailable: {unavailable_reason()}")
    out_dtype = value.dtype
    if out_dtype not in (torch.float32, torch.float64):
        value, sampling_locations, attention_weights = (
            t.float() for t in (value, sampling_locations, attention_weights)
        )
    out = torch.ops.detrlab.ms_deform_attn(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return out.to(out_dtype)


def level_tensors(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """``spatial_shapes`` [L, 2] and ``level_start_index`` [L] as int64 tensors."""
    shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=device)
    starts = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    return shapes, starts


if __name__ == "__main__":
    from detrlab.models.msda_check import main

    raise SystemExit(main())
