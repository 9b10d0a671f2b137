"""A real training run with gradient accumulation and a per-iteration warmup + cosine schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import open_dict

from detrlab import train


def test_accumulation_counts_in_the_logged_batch_and_the_iteration_schedule(tiny_train_cfg):
    # 16 images, 4 per batch, 2 batches per optimizer step: 2 optimizer steps per epoch, 6 in all.
    with open_dict(tiny_train_cfg):
        tiny_train_cfg.trainer.accumulate_grad_batches = 2
        tiny_train_cfg.trainer.max_epochs = 3
        tiny_train_cfg.model.optim.schedule.name = "cosine"
        tiny_train_cfg.model.optim.schedule.interval = "step"
        tiny_train_cfg.model.optim.schedule.warmup_iters = 2
        tiny_train_cfg.model.optim.schedule.warmup_start_factor = 0.5
    train.run(tiny_train_cfg)
    output_dir = Path(tiny_train_cfg.paths.output_dir)

    hparams = yaml.safe_load((output_dir / "csv" / "hparams.yaml").read_text())
    assert hparams["trainer"]["accumulate_grad_batches"] == 2
    assert hparams["run"]["accumulate_grad_batches"] == 2
    assert hparams["run"]["effective_batch_size"] == 4 * 1 * 2

    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 6
    # After 6 scheduler steps: warmup over 2, then cosine over the remaining 4 iterations, at 4/4.
    (group_lrs,) = [[g["lr"] for g in state["param_groups"]] for state in checkpoint["optimizer_states"]]
    base = tiny_train_cfg.model.optim.lr
    assert group_lrs[0] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 4 / 4)), abs=1e-12)
    scheduler = checkpoint["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 6
