"""The compiled multi-scale deformable attention kernel (C++ sources in ``ops/csrc``).

The extension is built just in time with :func:`torch.utils.cpp_extension.load` on first use and
cached by PyTorch (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), so the
ordinary ``pip install -e ".[dev]"`` is the whole install. Building ahead of time (for example in a
container image) is ``python -m detrlab.models.msda_kernel``.

The library defines two operators with ``TORCH_LIBRARY``: ``detrlab::ms_deform_attn`` and
``detrlab::ms_deform_attn_backward``. This module registers the autograd formula of the first (its
backward calls the second) and fake (meta) implementations of both, so the op works under
``torch.compile`` and ``torch.export``.

Environment:

* ``DETRLAB_OPS=0`` disables the kernel (the PyTorch path is used, no build is attempted).
* ``DETRLAB_OPS_SOURCES`` overrides the folder of C++ sources (the default is ``csrc/`` of the
  installed ``detrlab_ops`` package, i.e. ``ops/csrc`` in a source checkout and inside the wheel).

When the build fails (no compiler, no ``ninja``, sources absent) :func:`load` returns ``False`` and
logs a one-line notice; callers then use the PyTorch path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, library

log = logging.getLogger(__name__)

__all__ = [
    "EXTENSION_NAME",
    "load",
    "ms_deform_attn",
    "sources_dir",
    "supported_devices",
    "unavailable_reason",
]

EXTENSION_NAME = "detrlab_msda"
_OP = "detrlab::ms_deform_attn"
_state: dict[str, object] = {}


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


def _build(verbose: bool) -> None:
    from torch.utils import cpp_extension

    src = sources_dir()
    sources = sorted(str(p) for p in src.glob("*.cpp"))
    if not sources:
        raise FileNotFoundError(f"no C++ sources in {src} (set DETRLAB_OPS_SOURCES)")
    cuda_sources = sorted(str(p) for p in src.glob("*.cu"))
    with_cuda = bool(cuda_sources) and torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    if with_cuda:
        sources += cuda_sources
    log.info("building the deformable-attention extension %s (first use; cached afterwards)", EXTENSION_NAME)
    cpp_extension.load(
        name=EXTENSION_NAME + ("_cuda" if with_cuda else ""),
        sources=sources,
        extra_cflags=["-O3", "-fopenmp-simd"],
        extra_cuda_cflags=["-O3"],
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=verbose,
    )


def load(verbose: bool = False) -> bool:
    """Build (first time) and load the extension; ``True`` when the operators are available."""
    if "ok" in _state:
        return bool(_state["ok"])
    ok, reason = False, None
    if os.environ.get("DETRLAB_OPS", "1") == "0":
        reason = "disabled by DETRLAB_OPS=0"
    else:
        try:
            if not _op_registered():
                _build(verbose)
            ok = _op_registered()
            if not ok:
                reason = f"the library loaded but does not define {_OP}"
        except Exception as err:  # any build or load failure falls back to PyTorch
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    if ok:
        _register_python_side()
    else:
        log.warning(
            "detrlab: compiled deformable-attention kernel unavailable (%s); using the PyTorch path", reason
        )
    _state["ok"], _state["reason"] = ok, reason
    return ok


def unavailable_reason() -> str | None:
    """Why :func:`load` failed (``None`` when it succeeded or was not called)."""
    return _state.get("reason")  # type: ignore[return-value]


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

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_output):
        value, shapes, starts, loc, weight = ctx.saved_tensors
        grad_value, grad_loc, grad_weight = torch.ops.detrlab.ms_deform_attn_backward(
            value, shapes, starts, loc, weight, grad_output.contiguous()
        )
        needs = ctx.needs_input_grad
        return (
            grad_value if needs[0] else None,
            None,
            None,
            grad_loc if needs[3] else None,
            grad_weight if needs[4] else None,
        )

    library.register_autograd("detrlab::ms_deform_attn", backward, setup_context=setup_context)
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not load(verbose=True):
        raise SystemExit(f"build failed: {unavailable_reason()}")
    print(f"{EXTENSION_NAME}: built and loaded; kernels for {', '.join(supported_devices())}")
