"""Logger, sweep and launcher configs compose and build."""

from __future__ import annotations

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from detrlab.builders import build_loggers
from tests.helpers import compose_config, module_available


@pytest.mark.parametrize(
    ("logger", "expected"),
    [
        ("csv", [CSVLogger]),
        ("tensorboard", [TensorBoardLogger]),
        ("wandb", [WandbLogger]),
        ("many", [CSVLogger, TensorBoardLogger, WandbLogger]),
    ],
)
def test_logger_configs_build(logger, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config(
        "train",
        [f"logger={logger}", "logger.wandb.tags=[a,b]"] if "wandb" in logger else [f"logger={logger}"],
        tmp_path,
    )
    built = build_loggers(cfg.logger)
    assert len(built) == len(expected)
    assert all(isinstance(item, kind) for item, kind in zip(built, expected))
    for item in built:
        assert str(tmp_path) in str(item.save_dir)


def test_run_name_sets_a_stable_run_folder(tmp_path):
    cfg = compose_config("train", ["run_name=deta_a", "task_name=t"], tmp_path)
    assert cfg.hydra.run.dir.endswith("/t/runs/deta_a")
    assert cfg.hydra.sweep.dir.endswith("/t/multiruns/deta_a")


@pytest.mark.skipif(
    not module_available("hydra_plugins.hydra_submitit_launcher"),
    reason="needs the `slurm` extra (hydra-submitit-launcher)",
)
@pytest.mark.parametrize("launcher", ["slurm", "slurm_cpu"])
def test_slurm_launcher_has_one_task_per_device(launcher, tmp_path):
    cfg = compose_config(
        "train",
        [f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=3"],
        tmp_path,
    )
    assert cfg.hydra.launcher.tasks_per_node == 4
    assert cfg.hydra.launcher.nodes == 3
    assert cfg.hydra.launcher.additional_parameters.signal == "USR1@120"
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


@pytest.mark.skipif(
    not module_available("hydra_plugins.hydra_optuna_sweeper"),
    reason="needs the `sweep` extra (hydra-optuna-sweeper)",
)
def test_optuna_search_config_maximises_the_optimized_metric(tmp_path):
    cfg = compose_config("train", ["hparams_search=quickstart_optuna"], tmp_path)
    assert cfg.optimized_metric == "val/AP"
    assert cfg.hydra.sweeper.direction == "maximize"
    assert "model.optim.lr" in cfg.hydra.sweeper.params
