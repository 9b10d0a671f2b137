"""The entry points as a user runs them: bad overrides and missing data give readable errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(script: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unknown_config_option_names_the_group(tmp_path):
    result = run_cli("train.py", "model=nonexistent", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/nonexistent'" in result.stderr
    assert "Traceback" not in result.stderr


def test_misspelled_key_names_the_key(tmp_path):
    result = run_cli("train.py", "trainer.max_epoch=1", cwd=tmp_path)
    assert result.returncode != 0
    assert "max_epoch" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "no_coco_here"
    result = run_cli(
        "train.py",
        "~experiment",
        "data=coco",
        f"data.root={missing}",
        "trainer.accelerator=cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "data.root" in result.stderr
    assert "Traceback" not in result.stderr


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = run_cli("train.py", "model=detr_r50", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "detrlab.models.detr.DETR" in result.stdout
