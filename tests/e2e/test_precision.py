"""Mixed precision: bf16 autocast trains DETA through the deformable-attention op."""

from __future__ import annotations

import math

from omegaconf import open_dict

from detrlab import train
from tests.helpers import TINY_OVERRIDES, compose_config


def test_bf16_mixed_fast_dev_run_on_deta(tmp_path, synthetic_data_dir):
    cfg = compose_config(
        "train",
        [
            "model=deta_small",
            *TINY_OVERRIDES,
            f"paths.data_dir={synthetic_data_dir}",
            "trainer.precision=bf16-mixed",
        ],
        output_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
    metrics = train.run(cfg)
    assert math.isfinite(metrics["train/loss"])
    assert 0.0 <= metrics["val/AP"] <= 1.0
