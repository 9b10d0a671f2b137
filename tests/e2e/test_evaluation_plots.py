"""Evaluation plots: PNGs in the run folder after a debug training run and after eval.py."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from detrlab import eval as evaluation
from detrlab import train
from detrlab.evaluation.plots import PLOT_NAMES
from tests.helpers import TINY_OVERRIDES, compose_config


def _assert_pngs(folder: Path) -> None:
    for name in PLOT_NAMES:
        path = folder / f"{name}.png"
        assert path.is_file(), f"{path} missing; folder has {sorted(p.name for p in folder.glob('*'))}"
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 300


def test_debug_fast_dev_run_writes_the_plots(tmp_path, synthetic_data_dir):
    cfg = compose_config(
        "train", [*TINY_OVERRIDES, f"paths.data_dir={synthetic_data_dir}", "debug=fdr"], output_dir=tmp_path
    )
    train.run(cfg)
    _assert_pngs(tmp_path / "plots" / "epoch_000")


def test_training_epochs_and_eval_write_the_plots(tmp_path, synthetic_data_dir):
    train_dir = tmp_path / "train"
    cfg = compose_config(
        "train",
        [
            *TINY_OVERRIDES,
            f"paths.data_dir={synthetic_data_dir}",
            "debug=limit",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "trainer.max_epochs=2",
        ],
        output_dir=train_dir,
    )
    train.run(cfg)
    _assert_pngs(train_dir / "plots" / "epoch_000")
    _assert_pngs(train_dir / "plots" / "epoch_001")

    eval_dir = tmp_path / "eval"
    cfg = compose_config(
        "eval",
        [
            f"ckpt_path={train_dir / 'checkpoints' / 'last.ckpt'}",
            "trainer.accelerator=cpu",
            f"paths.data_dir={synthetic_data_dir}",
        ],
        eval_dir,
    )
    evaluation.run(cfg)
    _assert_pngs(eval_dir / "plots")
