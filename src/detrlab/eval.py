"""Evaluation run: rebuild the model of a checkpoint and report COCO AP on a validation set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from detrlab.builders import build_datamodule, build_model, build_trainer
from detrlab.callbacks.config_in_checkpoint import CHECKPOINT_CONFIG_KEY
from detrlab.errors import CheckpointError, ConfigError
from detrlab.utils.config_tree import print_config_tree

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint on the CPU, with an error that names a missing file."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path} does not exist: pass the .ckpt file of a training run.")
    # Our checkpoints hold plain Python containers besides tensors; they are the user's own files.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' key).")
    return checkpoint


def fill_from_checkpoint(cfg: DictConfig, checkpoint: dict[str, Any]) -> None:
    """Use the checkpoint's stored ``model``/``data`` configs where ``cfg`` leaves them unset."""
    stored = checkpoint.get(CHECKPOINT_CONFIG_KEY, {})
    with open_dict(cfg):
        for key in ("model", "data"):
            if cfg.get(key) is None:
                if key not in stored:
                    raise ConfigError(
                        f"The checkpoint has no stored `{key}` config and none was given: "
                        f"add `{key}=<name>` to the command (e.g. model=detr_r50 data=coco)."
                    )
                cfg[key] = OmegaConf.create(stored[key])


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on the validation split of ``cfg.data``.

    Prints the 12-number COCO summary and writes the predictions as a COCO results JSON to
    ``cfg.results_file``.

    Returns:
        The ``val/*`` metrics as floats.
    """
    checkpoint = load_checkpoint(cfg.ckpt_path)
    fill_from_checkpoint(cfg, checkpoint)
    if cfg.get("print_config"):
        print_config_tree(cfg)

    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg.model)
    model.load_state_dict(checkpoint["state_dict"])
    trainer = build_trainer(cfg.trainer, callbacks=[], loggers=[])
    trainer.validate(model, datamodule=datamodule, verbose=False)

    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
    if trainer.is_global_zero:
        print(model.evaluator.summary_table())
        if cfg.get("results_file"):
            path = Path(cfg.results_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            model.evaluator.write_results(path)
            log.info("Predictions written to %s", path)
    return metrics
