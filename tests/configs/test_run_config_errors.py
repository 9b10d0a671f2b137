"""Configuration mistakes are the project's ConfigError, found before any data is read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from detrlab import train
from detrlab.config_validation import validate_run_config
from detrlab.data.datamodule import CocoDataModule
from detrlab.errors import ConfigError, DetrlabError
from tests.helpers import compose_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def compose(tmp_path):
    def _compose(*overrides: str):
        return compose_config(
            "train", ["trainer.accelerator=cpu", "print_config=false", *overrides], tmp_path
        )

    yield _compose
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("model", "levels", "ok"),
    [
        ("deta_r50", 5, True),  # the paper: C3-C5 + 2 extra levels at strides 64, 128
        ("deta_r50", 6, True),  # stride 256 still fits the 256-px quickstart images
        ("deta_r50", 7, False),  # stride 512 > 256 px: one pixel for every image
        ("deformable_detr_r50", 1, True),
    ],
)
def test_feature_levels_beyond_what_the_backbone_can_give(compose, model, levels, ok):
    cfg = compose(f"model={model}", f"model.detector.num_feature_levels={levels}")
    if ok:
        validate_run_config(cfg)
    else:
        with pytest.raises(ConfigError, match=r"num_feature_levels=7.*stride 512.*at most 6 levels"):
            validate_run_config(cfg)


def test_coco_sized_images_allow_more_levels_than_small_ones(compose):
    coco = ("~experiment", "data=coco", "data.root=/data/coco", "model=deta_r50")
    # 1333 px: C3-C5 (stride 32) + 5 extra levels reach stride 1024; a sixth would be 2048
    validate_run_config(compose(*coco, "model.detector.num_feature_levels=8"))
    with pytest.raises(ConfigError, match="at most 8 levels"):
        validate_run_config(compose(*coco, "model.detector.num_feature_levels=9"))


def test_the_level_check_runs_before_any_data_is_read(compose, tmp_path):
    missing = tmp_path / "no_data_here"
    cfg = compose(
        "~experiment",
        "data=coco_format",
        f"data.train_images={missing}",
        f"data.train_annotations={missing}/train.json",
        f"data.val_images={missing}",
        f"data.val_annotations={missing}/val.json",
        "model=deta_r50",
        "model.detector.num_feature_levels=12",
    )
    with pytest.raises(ConfigError, match="num_feature_levels=12"):
        train.run(cfg)  # not DatasetNotFoundError: the annotation files were never opened


def test_bad_schedule_values_fail_in_the_run_config_checks(compose):
    with pytest.raises(ConfigError, match="warmup_iters=10 counts optimizer steps"):
        validate_run_config(
            compose("model.optim.schedule.interval=epoch", "model.optim.schedule.warmup_iters=10")
        )
    with pytest.raises(ConfigError, match="lr_drops entry 40"):
        validate_run_config(compose("model.optim.schedule.lr_drops=[40]"))


def test_datamodule_mistakes_are_config_errors_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train_images.*data.root"):
        CocoDataModule(val_images=tmp_path, val_annotations=tmp_path / "a.json")
    with pytest.raises(ConfigError, match=r"data.on_bad_image='ignore'"):
        CocoDataModule(root=tmp_path, on_bad_image="ignore")
    with pytest.raises(ConfigError, match=r"data.timeout=-1"):
        CocoDataModule(root=tmp_path, timeout=-1)


def test_datamodule_class_count_mismatch_is_a_config_error(tmp_path):
    from detrlab.data.synthetic import generate_shapes_dataset

    generate_shapes_dataset(tmp_path, num_train=2, num_val=2, image_size=32, max_objects=2, seed=0)
    datamodule = CocoDataModule(
        train_images=tmp_path / "train",
        train_annotations=tmp_path / "annotations" / "train.json",
        val_images=tmp_path / "val",
        val_annotations=tmp_path / "annotations" / "val.json",
        num_classes=5,
    )
    with pytest.raises(ConfigError, match=r"data.num_classes=5 .* has 3 categories"):
        datamodule.setup("fit")
    assert issubclass(ConfigError, DetrlabError)


def test_a_schedule_mistake_on_the_command_line_exits_1_without_a_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "model.optim.schedule.name=poly",
            "trainer.accelerator=cpu",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "model.optim.schedule.name='poly'" in result.stderr
    assert "Traceback" not in result.stderr
