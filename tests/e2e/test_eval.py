"""eval.run rebuilds a trained model from its checkpoint and reproduces its validation AP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detrlab import eval as evaluation
from detrlab import train
from detrlab.errors import CheckpointError
from tests.helpers import compose_config


def test_eval_reproduces_the_training_validation(tiny_train_cfg, tmp_path):
    train_metrics = train.run(tiny_train_cfg)
    last = Path(tiny_train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    eval_dir = tmp_path / "eval"
    cfg = compose_config(
        "eval",
        [f"ckpt_path={last}", "trainer.accelerator=cpu", f"paths.data_dir={tiny_train_cfg.paths.data_dir}"],
        eval_dir,
    )
    metrics = evaluation.run(cfg)
    assert metrics["val/AP"] == pytest.approx(train_metrics["val/AP"], abs=1e-6)
    results = json.loads((eval_dir / "predictions.json").read_text())
    assert isinstance(results, list)
    assert all({"image_id", "category_id", "bbox", "score"} <= set(r) for r in results)


def test_eval_names_a_missing_checkpoint(tmp_path):
    cfg = compose_config("eval", [f"ckpt_path={tmp_path / 'missing.ckpt'}"], tmp_path)
    with pytest.raises(CheckpointError, match=r"missing\.ckpt"):
        evaluation.run(cfg)
