"""Read detrlab checkpoints: the weights, the stored run config and the dataset's classes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from detrlab.builders import build_model
from detrlab.callbacks.config_in_checkpoint import CHECKPOINT_CONFIG_KEY
from detrlab.callbacks.ema import RAW_WEIGHTS_KEY
from detrlab.errors import CheckpointError, ConfigError
from detrlab.module import DetectionModule

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


def load_trained_weights(
    model: DetectionModule, checkpoint: dict[str, Any], use_averaged: bool = True
) -> str:
    """Load a detrlab checkpoint's weights into ``model``, the EMA ones when the run kept an average.

    Every key must match (strict loading). Which weights were used is logged and returned, so
    eval, predict and export can say what they evaluated.

    Args:
        model: the ``DetectionModule`` built from the checkpoint's model config.
        checkpoint: a dict from :func:`load_checkpoint`.
        use_averaged: ``True`` picks the averaged weights when the checkpoint has them (trained with
            ``ema=on``), ``False`` the raw trained weights. Without an average both mean the same.

    Returns:
        ``"averaged"`` or ``"raw"``: the weights now in ``model``.
    """
    has_average = RAW_WEIGHTS_KEY in checkpoint
    if has_average and not use_averaged:
        model.load_state_dict(checkpoint[RAW_WEIGHTS_KEY])
        log.info("Using the raw trained weights of the checkpoint (it also holds an EMA of them).")
        return "raw"
    model.load_state_dict(checkpoint["state_dict"])
    if has_average:
        updates = checkpoint.get("averaging_state", {}).get("n_averaged")
        count = f" over {int(updates)} updates" if updates is not None else ""
        log.info("Using the checkpoint's exponential moving average (EMA) of the weights%s.", count)
        return "averaged"
    log.info("Using the checkpoint's trained weights (it holds no weight average).")
    return "raw"


def model_from_checkpoint(
    cfg_model: DictConfig, checkpoint: dict[str, Any], use_averaged: bool = True
) -> DetectionModule:
    """Build ``cfg.model`` and load the checkpoint's weights (see :func:`load_trained_weights`)."""
    model = build_model(cfg_model)
    load_trained_weights(model, checkpoint, use_averaged=use_averaged)
    return model


def stored_classes(checkpoint: dict[str, Any]) -> tuple[list[str], list[int]] | None:
    """``(class_names, label_to_category_id)`` saved at training time, or None for older checkpoints."""
    stored = checkpoint.get(CHECKPOINT_CONFIG_KEY, {})
    if "class_names" not in stored or "label_to_category_id" not in stored:
        return None
    return [str(name) for name in stored["class_names"]], [int(c) for c in stored["label_to_category_id"]]
