"""End-to-end training on tiny synthetic data (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import open_dict

from detrlab import train


def test_fast_dev_run_trains_and_validates(tiny_train_cfg):
    with open_dict(tiny_train_cfg):
        tiny_train_cfg.trainer.fast_dev_run = True
    metrics = train.run(tiny_train_cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    # Validation ran COCO evaluation and logged its numbers.
    assert 0.0 <= metrics["val/AP"] <= 1.0
    assert 0.0 <= metrics["val/AP50"] <= 1.0


def test_run_writes_checkpoints_logs_and_resolved_config(tiny_train_cfg):
    train.run(tiny_train_cfg)
    output_dir = Path(tiny_train_cfg.paths.output_dir)
    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
    assert (output_dir / "csv" / "metrics.csv").is_file()
    # The losses and COCO metrics per epoch, drawn from that metrics.csv at the end of the run.
    assert (output_dir / "results.png").read_bytes()[:4] == b"\x89PNG"
    resolved = (output_dir / "resolved_config.yaml").read_text()
    assert "num_classes: 3" in resolved  # interpolations resolved


def test_resume_continues_the_epoch_count(tiny_train_cfg):
    train.run(tiny_train_cfg)
    last = Path(tiny_train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=False)
    assert first["epoch"] == 0

    with open_dict(tiny_train_cfg):
        tiny_train_cfg.ckpt_path = str(last)
        tiny_train_cfg.trainer.max_epochs = 2
    train.run(tiny_train_cfg)
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 1
    # One more epoch of optimizer steps, not two: training continued where it stopped.
    assert resumed["global_step"] == 2 * first["global_step"]


def test_seed_zero_is_honoured(tiny_train_cfg):
    with open_dict(tiny_train_cfg):
        tiny_train_cfg.seed = 0
        tiny_train_cfg.trainer.fast_dev_run = True
    first = train.run(tiny_train_cfg)["train/loss"]
    second = train.run(tiny_train_cfg)["train/loss"]
    assert first == second
