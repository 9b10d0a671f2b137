"""Impossible combinations fail before anything is built, naming the conflicting keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from detrlab.config_validation import validate_run_config
from detrlab.errors import ConfigError
from tests.e2e.test_cli import run_cli
from tests.helpers import compose_config


def _cfg(tmp_path: Path, *overrides: str):
    cfg = compose_config("train", ["data.num_classes=3", "paths.data_dir=/unused", *overrides], tmp_path)
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize(
    "model", ["detr_small", "detr_r50", "deta_small", "deta_r50", "deta_swin", "deformable_detr_r50"]
)
def test_shipped_model_configs_pass(tmp_path, model):
    validate_run_config(_cfg(tmp_path, f"model={model}", "trainer.accelerator=cpu"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model=deformable_detr_r50", "model/assigner=deta"],
            r"assign_first_stage \(model.criterion.assignment.stage1_assigner .*\) needs a two-stage detector",
        ),
        (
            [
                "model=deformable_detr_r50",
                "model/assigner=deta",
                "model.criterion.assignment.stage1_assigner=null",
                "model.detector.assign_first_stage=false",
            ],
            r"assign_second_stage \(model.criterion.assignment.stage2_assigner: .*\) needs a two-stage detector",
        ),
        (
            ["model=deformable_detr_r50", "model.detector.two_stage=true"],
            r"two_stage=true needs model.detector.with_box_refine=true",
        ),
        (
            ["model=deta_small", "model.num_queries=3"],
            r"model.num_queries=3 is smaller than num_feature_levels=4",
        ),
        (
            ["model=deta_small", "model.criterion.classification.num_classes=5"],
            r"model.criterion.classification.num_classes=5 differs",
        ),
        (
            [
                "model=detr_small",
                "model.criterion.classification._target_=detrlab.losses.classification.SigmoidFocalLoss",
            ],
            r"model.detector is a DETR but model.criterion.classification is a SigmoidFocalLoss",
        ),
    ],
    ids=[
        "assign-first-no-two-stage",
        "assign-second-no-two-stage",
        "two-stage-no-refine",
        "queries<levels",
        "num-classes",
        "softmax-vs-sigmoid",
    ],
)
def test_conflicting_model_keys_are_named(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_run_config(_cfg(tmp_path, *overrides, "trainer.accelerator=cpu"))


def test_all_problems_are_reported_at_once(tmp_path):
    cfg = _cfg(
        tmp_path,
        "model=deformable_detr_r50",
        "model/assigner=deta",
        "model.criterion.classification.num_classes=5",
        "trainer.accelerator=cpu",
    )
    with pytest.raises(ConfigError) as info:
        validate_run_config(cfg)
    message = str(info.value)
    # the assigner group turns on both DETA stages; plus the class-count conflict
    assert message.count("\n  - ") == 3
    assert "assign_first_stage" in message and "assign_second_stage" in message and "num_classes" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without GPU")
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer=gpu"], r"trainer.accelerator=gpu but this machine has no CUDA GPU"),
        (["trainer.devices=8"], r"trainer.devices=8 with trainer.accelerator=auto, but no GPU is visible"),
    ],
)
def test_devices_beyond_the_machine_are_named(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_run_config(_cfg(tmp_path, *overrides))


def test_cpu_data_parallel_is_allowed_when_asked_for(tmp_path):
    validate_run_config(_cfg(tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"))


def test_train_py_reports_the_conflict_without_a_traceback(tmp_path):
    result = run_cli(
        "train.py",
        "model=deformable_detr_r50",
        "model/assigner=deta",
        "trainer.accelerator=cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "needs a two-stage detector" in result.stderr
    assert "Traceback" not in result.stderr
