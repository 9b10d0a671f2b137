"""benchmarks/gpu_check.py runs every section on the CPU (--dry-run) and prints one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_dry_run_runs_every_section_without_failures():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("\n\n")[-1]
    rows = [line for line in table.splitlines() if line.strip()]
    sections = {row.split()[0] for row in rows}
    assert {"env", "op", "deta", "train"} <= sections, table
    assert "correctness" in sections, table
    failures = [row for row in rows if " FAIL" in row]
    assert not failures, "\n".join(failures) + "\n" + result.stderr[-3000:]
    assert any("grid_sample eager" in row and "fwd+bwd" in row for row in rows)
    assert any("train step bf16-mixed" in row for row in rows) and any("reference" in row for row in rows)
