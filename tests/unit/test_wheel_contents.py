"""The wheel carries the kernels: every C++ source and Python module of ``ops/`` under ``detrlab_ops/``.

Building a wheel takes about half a minute, hence ``slow``; CI also installs the wheel outside the
checkout and runs the compiled kernel from it (``.ci/wheel_check``).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_ships_the_kernel_sources_and_modules(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("detrlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    ops = ROOT / "ops"
    expected = {
        f"detrlab_ops/{path.relative_to(ops).as_posix()}"
        for pattern in ("*.py", "csrc/*.cpp", "csrc/*.h")
        for path in ops.glob(pattern)
    }
    assert "detrlab_ops/csrc/ms_deform_attn.cpp" in expected
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert "detrlab/models/msda_kernel.py" in names
