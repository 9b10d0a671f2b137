"""Just-in-time build of the C++ deformable-attention kernel, threaded with torch's own OpenMP runtime.

ATen's ``at::parallel_for`` is a header template: with torch's OpenMP backend it only runs in
parallel when the *including* code is compiled with OpenMP (``_OPENMP`` defined), otherwise the loop
runs serially. ``torch.utils.cpp_extension`` adds no OpenMP flag on Linux, so the build does:

* compile with ``-fopenmp``;
* link against the OpenMP runtime this process already loaded for torch (the pip wheels ship
  ``torch/lib/libgomp.so.1``) instead of the compiler's own ``libgomp``. The extension then shares
  torch's thread pool and honours ``torch.set_num_threads``; a second runtime would size its own pool
  from the core count and ignore torch's setting.

With ATen's native thread-pool backend no flag is needed (``parallel_for`` calls into libtorch).
Where no OpenMP setup is known to work (macOS' Apple clang, Windows) the kernel is built without it
and runs on one thread; :func:`threading_description` says which case applies.

The compiler's default x86-64 target has no AVX: the kernel's 32-channel loops would run as 4-wide
SSE with the accumulators spilled to the stack. On x86-64 processors that torch itself runs with its
AVX2 (or AVX-512) kernels, the build adds ``-mavx2 -mfma`` (the sampling kernels ran about twice as
fast; DECISIONS.md), and the extension's name carries that instruction set
(``detrlab_msda_avx2``), so a build cached in a home folder shared by machines of different
generations is never loaded by one without AVX2. Elsewhere (other processors, other architectures)
the kernel is built for the compiler's default target.
"""

from __future__ import annotations

import logging
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

__all__ = [
    "InstructionSet",
    "ThreadingSetup",
    "build_extension",
    "build_failure_summary",
    "instruction_set",
    "threading_setup",
]

# File names of the OpenMP runtimes torch builds may load: GNU, LLVM, Intel.
_OPENMP_RUNTIME = re.compile(r"^lib(gomp|omp|iomp5)[-.\w]*\.so(\.\d+)*$")


@dataclass(frozen=True)
class ThreadingSetup:
    """How the kernel's ``at::parallel_for`` will run, and the flags that make it so.

    Attributes:
        description: one line for logs and ``--check`` (backend, runtime path).
        parallel: whether the loops can use more than one thread.
        cflags / ldflags: extra compiler and linker arguments.
    """

    description: str
    parallel: bool
    cflags: list[str] = field(default_factory=list)
    ldflags: list[str] = field(default_factory=list)


def _aten_backend() -> str:
    """``"openmp"`` or ``"native"``: ATen's intra-op backend as torch reports it."""
    info = torch.__config__.parallel_info()
    match = re.search(r"ATen parallel backend:\s*(.+)", info)
    backend = match.group(1).strip().lower() if match else ""
    return "openmp" if "openmp" in backend else "native"


def loaded_openmp_runtimes() -> list[Path]:
    """Shared OpenMP runtimes mapped into this process (Linux ``/proc/self/maps``; else empty)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return []
    found: dict[str, None] = {}
    for line in maps.read_text().splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if path.startswith("/") and _OPENMP_RUNTIME.match(Path(path).name):
            found[path] = None
    return [Path(p) for p in found]


def _torch_openmp_runtime() -> Path | None:
    """The OpenMP runtime torch loaded: one under ``torch/`` (or the ``torch.libs/`` of auditwheel
    builds), else the only one mapped. Other packages may bundle their own copies (scikit-learn
    does), so a runtime outside torch's folders is taken only when it is the only one."""
    runtimes = loaded_openmp_runtimes()
    torch_dir = Path(torch.__file__).resolve().parent
    torch_folders = (torch_dir, torch_dir.parent / "torch.libs")
    for runtime in runtimes:
        if any(folder in runtime.resolve().parents for folder in torch_folders):
            return runtime
    return runtimes[0] if len(runtimes) == 1 else None


def threading_setup() -> ThreadingSetup:
    """The compile/link flags that make ``at::parallel_for`` parallel with torch's thread pool."""
    if _aten_backend() == "native":
        return ThreadingSetup("ATen native thread pool (no OpenMP flags needed)", parallel=True)
    if sys.platform.startswith("linux"):
        runtime = _torch_openmp_runtime()
        if runtime is not None:
            return ThreadingSetup(f"OpenMP, torch's runtime {runtime}", True, ["-fopenmp"], [str(runtime)])
        # torch linked its runtime statically or under an unknown name: the compiler's default
        return ThreadingSetup("OpenMP, the compiler's default runtime", True, ["-fopenmp"], ["-fopenmp"])
    return ThreadingSetup(
        f"serial: no known OpenMP setup for C++ extensions on {sys.platform}", parallel=False
    )


@dataclass(frozen=True)
class InstructionSet:
    """The vector instructions the kernel is compiled for.

    Attributes:
        name: suffix of the extension's name (``"avx2"``), empty for the compiler's default target.
        cflags: the compiler arguments that enable it.
    """

    name: str
    cflags: list[str] = field(default_factory=list)


def instruction_set() -> InstructionSet:
    """AVX2 + FMA on x86-64 processors where torch dispatches its own AVX2 / AVX-512 kernels, else the
    compiler's default target. Read from ``torch.backends.cpu.get_cpu_capability()``, torch's own
    detection, which also honours ``ATEN_CPU_CAPABILITY`` (``ATEN_CPU_CAPABILITY=default`` builds
    the portable kernel)."""
    machine = platform.machine().lower()
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if machine in ("x86_64", "amd64") and capability in ("AVX2", "AVX512"):
        return InstructionSet("avx2", ["-mavx2", "-mfma"])
    return InstructionSet("")


def build_extension(name: str, sources_dir: Path, verbose: bool) -> tuple[Path, ThreadingSetup]:
    """Compile (or reuse the cached build of) the extension from ``sources_dir`` and load it.

    Returns the path of the loaded shared library and the threading setup it was built with.
    Raises ``FileNotFoundError`` without sources and ``RuntimeError`` (with the compiler's output)
    when the build fails.
    """
    from torch.utils import cpp_extension

    sources = sorted(str(p) for p in sources_dir.glob("*.cpp"))
    if not sources:
        raise FileNotFoundError(
            f"no C++ sources (*.cpp) in {sources_dir}: reinstall detrlab, or point DETRLAB_OPS_SOURCES "
            "at a folder holding ms_deform_attn.cpp"
        )
    cuda_sources = sorted(str(p) for p in sources_dir.glob("*.cu"))
    with_cuda = bool(cuda_sources) and torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    if with_cuda:
        sources += cuda_sources
    threading = threading_setup()
    isa = instruction_set()
    full_name = "_".join(part for part in (name, isa.name, "cuda" if with_cuda else "") if part)
    log.info(
        "building the deformable-attention extension %s from %s (first use; cached afterwards; %s)",
        full_name,
        sources_dir,
        threading.description,
    )
    library = cpp_extension.load(
        name=full_name,
        sources=sources,
        # -fopenmp-simd keeps the `omp simd` loops vectorised where full OpenMP is unavailable
        extra_cflags=["-O3", "-fopenmp-simd", *isa.cflags, *threading.cflags],
        extra_ldflags=threading.ldflags,
        extra_cuda_cflags=["-O3"],
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=verbose,
    )
    return Path(library), threading


def build_failure_summary(err: BaseException, max_lines: int = 12) -> str:
    """The lines of a failed build that say why: the compiler's and linker's errors, else the message.

    ``cpp_extension`` raises one ``RuntimeError`` holding the whole ninja log; notices and the
    ``DETRLAB_OPS=require`` error quote only what a reader needs.
    """
    lines = [line.rstrip() for line in str(err).strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\berror:|\bld: ", line)]
    if not errors:
        detail = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))
        return f"{type(err).__name__}: {detail}"
    more = f"\n  ... and {len(errors) - max_lines} more" if len(errors) > max_lines else ""
    return f"{type(err).__name__}: the build failed:\n  " + "\n  ".join(errors[:max_lines]) + more
