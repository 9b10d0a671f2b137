"""The wheel's package list in pyproject.toml names every package of the source tree."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _source_packages() -> set[str]:
    src = ROOT / "src"
    found = {".".join(init.parent.relative_to(src).parts) for init in src.rglob("__init__.py")}
    return found | {"detrlab_ops"}


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    missing = _source_packages() - listed
    assert not missing, (
        f"add these packages to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    )
    assert config["package-dir"]["detrlab_ops"] == "ops"


def test_kernel_sources_found_through_the_package():
    import detrlab_ops
    from detrlab.models import msda_kernel

    assert (detrlab_ops.csrc_dir() / "ms_deform_attn.cpp").is_file()
    assert msda_kernel.sources_dir() == detrlab_ops.csrc_dir()
