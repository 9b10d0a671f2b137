"""detrlab's deformable-attention kernels, installed as the ``detrlab_ops`` package.

This folder is the top-level home of the kernels in the source tree and is shipped inside the
wheel under the name ``detrlab_ops`` (``package-dir`` mapping in ``pyproject.toml``):

* ``csrc/``: the C++ (CPU) kernel, built just in time by :mod:`detrlab.models.msda_kernel`;
* ``msda_triton.py``: the Triton (GPU) kernels.

Nothing here imports torch at package import time, so locating the sources is cheap.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["csrc_dir"]


def csrc_dir() -> Path:
    """The folder holding the C++ kernel sources of the installed package."""
    return Path(__file__).resolve().parent / "csrc"
