"""Multirun sweeps through the command line: the basic sweeper and the Optuna sweeper.

A minute each, so outside the default suite; CI runs them as a separate step (``pytest -m sweep``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_OVERRIDES, module_available

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.sweep


def _run(args: list[str], tmp_path: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = subprocess.run(
        [sys.executable, "train.py", *args, f"paths.log_dir={tmp_path}", "task_name=sweep_test"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def test_basic_sweeper_runs_each_job_in_its_own_folder_and_tracking_run(tmp_path, synthetic_data_dir):
    _run(
        [
            "-m",
            "model.optim.lr=1e-4,2e-4",
            *TINY_OVERRIDES,
            f"paths.data_dir={synthetic_data_dir}",
            "logger=many",
            "run_name=lr",
        ],
        tmp_path,
    )
    sweep_dir = tmp_path / "sweep_test" / "multiruns" / "lr"
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [job.name for job in jobs] == ["0", "1"]
    run_ids = set()
    for job, lr in zip(jobs, (1e-4, 2e-4)):
        assert (job / "checkpoints" / "last.ckpt").is_file()
        hparams = yaml.safe_load((job / "csv" / "hparams.yaml").read_text())
        assert hparams["model"]["optim"]["lr"] == pytest.approx(lr)
        (run_dir,) = (job / "wandb").glob("offline-run-*")
        run_ids.add(run_dir.name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2  # one W&B run per job, not one shared run


@pytest.mark.skipif(
    not module_available("hydra_plugins.hydra_optuna_sweeper"),
    reason="needs the `sweep` extra (hydra-optuna-sweeper)",
)
def test_optuna_sweep_maximises_val_ap(tmp_path, synthetic_data_dir):
    _run(
        [
            "hparams_search=quickstart_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            *TINY_OVERRIDES,
            f"paths.data_dir={synthetic_data_dir}",
            "run_name=optuna",
        ],
        tmp_path,
    )
    sweep_dir = tmp_path / "sweep_test" / "multiruns" / "optuna"
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert 0.0 <= results["best_value"] <= 1.0
    assert set(results["best_params"]) == {
        "model.optim.lr",
        "model.optim.lr_backbone",
        "model.optim.weight_decay",
    }
