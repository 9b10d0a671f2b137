"""A failed kernel build cannot hide: DETRLAB_OPS=require makes it an error that quotes the compiler.

The broken-source test builds a copy of ``ops/csrc`` with one bad line, in a subprocess with its own
extension cache, so the real build of this session is untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detrlab.errors import ConfigError, KernelUnavailableError
from detrlab.models import msda_build, msda_kernel

# The corruption: an include of a header that does not exist stops the compiler at once (a fatal
# error), so the failing build takes seconds rather than a full compile.
BROKEN_LINE = '#include "detrlab_no_such_header.h"\n'


def _broken_sources(tmp_path: Path) -> Path:
    sources = tmp_path / "csrc"
    shutil.copytree(msda_kernel.sources_dir(), sources)
    cpp = sources / "ms_deform_attn.cpp"
    cpp.write_text(BROKEN_LINE + cpp.read_text())
    return sources


def _load_in_subprocess(tmp_path: Path, sources: Path, mode: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DETRLAB_OPS": mode,
        "DETRLAB_OPS_SOURCES": str(sources),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"),
    }
    code = "from detrlab.models import msda_kernel; print('loaded:', msda_kernel.load())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")
def test_require_turns_a_broken_build_into_an_error_with_the_compilers_reason(tmp_path):
    result = _load_in_subprocess(tmp_path, _broken_sources(tmp_path), "require")
    assert result.returncode != 0, result.stdout
    assert "KernelUnavailableError" in result.stderr
    assert "DETRLAB_OPS=require" in result.stderr
    # the compiler's own diagnosis, not just "build failed"
    assert "detrlab_no_such_header.h" in result.stderr and "error" in result.stderr
    assert "loaded:" not in result.stdout


def test_a_broken_build_without_require_falls_back_with_one_notice(tmp_path, monkeypatch, caplog):
    # In-process, with the build replaced by the error cpp_extension raises for a compile failure.
    ninja_log = (
        "Error building extension 'detrlab_msda': [1/2] c++ -MMD -MF ms_deform_attn.o.d -O3 -c ms_deform_attn.cpp\n"
        "FAILED: ms_deform_attn.o\n"
        "ms_deform_attn.cpp:1:10: fatal error: detrlab_no_such_header.h: No such file or directory\n"
        "compilation terminated.\n"
        "ninja: build stopped: subcommand failed.\n"
    )

    def failing_build(*args, **kwargs):
        raise RuntimeError(ninja_log)

    monkeypatch.setattr(msda_build, "build_extension", failing_build)
    monkeypatch.setattr(msda_kernel, "_op_registered", lambda: False)
    monkeypatch.setattr(msda_kernel, "_state", {})
    monkeypatch.setenv("DETRLAB_OPS", "1")
    with caplog.at_level("WARNING", logger=msda_kernel.__name__):
        assert not msda_kernel.load()
    notices = [r.getMessage() for r in caplog.records if "deformable-attention" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "detrlab_no_such_header.h: No such file or directory" in notices[0]
    # once decided, the same process asked to require the kernel raises with the full reason
    monkeypatch.setenv("DETRLAB_OPS", "require")
    with pytest.raises(KernelUnavailableError, match=r"fatal error: detrlab_no_such_header\.h"):
        msda_kernel.load()


def test_unknown_setting_is_rejected_with_the_valid_ones(monkeypatch):
    monkeypatch.setenv("DETRLAB_OPS", "yes")
    with pytest.raises(ConfigError, match=r"DETRLAB_OPS='yes'.*require"):
        msda_kernel.mode()


def test_failure_summary_keeps_compiler_and_linker_errors_only():
    err = RuntimeError(
        "Error building extension 'x': [1/2] c++ -Werror=return-type -c a.cpp\n"
        "a.cpp:3:1: error: expected ';' before '}' token\n"
        "[2/2] c++ a.o -shared -o x.so\n"
        "/usr/bin/ld: cannot find -lmissing: No such file or directory\n"
        "collect2: error: ld returned 1 exit status\n"
        "ninja: build stopped: subcommand failed.\n"
    )
    summary = msda_build.build_failure_summary(err)
    assert summary.splitlines()[1:] == [
        "  a.cpp:3:1: error: expected ';' before '}' token",
        "  /usr/bin/ld: cannot find -lmissing: No such file or directory",
        "  collect2: error: ld returned 1 exit status",
    ]
    assert msda_build.build_failure_summary(FileNotFoundError("no C++ sources in /x")) == (
        "FileNotFoundError: no C++ sources in /x"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux OpenMP flags")
def test_openmp_build_links_the_runtime_torch_loaded():
    import torch

    setup = msda_build.threading_setup()
    if "OpenMP" not in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        assert setup.cflags == [] and setup.parallel
        return
    assert "-fopenmp" in setup.cflags and setup.parallel
    runtime = Path(setup.ldflags[0])
    assert runtime.is_file() and runtime in msda_build.loaded_openmp_runtimes()
