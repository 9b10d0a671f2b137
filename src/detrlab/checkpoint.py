"""Read detrlab checkpoints: the weights, the stored run config and the dataset's classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from detrlab.builders import build_model
from detrlab.callbacks.config_in_checkpoint import CHECKPOINT_CONFIG_KEY
from detrlab.errors import CheckpointError, ConfigError
from detrlab.module import DetectionModule


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


def model_from_checkpoint(cfg_model: DictConfig, checkpoint: dict[str, Any]) -> DetectionModule:
    """Build ``cfg.model`` and load the checkpoint's weights into it (strictly: every key must match)."""
    model = build_model(cfg_model)
    model.load_state_dict(checkpoint["state_dict"])
    return model


def stored_classes(checkpoint: dict[str, Any]) -> tuple[list[str], list[int]] | None:
    """``(class_names, label_to_category_id)`` saved at training time, or None for older checkpoints."""
    stored = checkpoint.get(CHECKPOINT_CONFIG_KEY, {})
    if "class_names" not in stored or "label_to_category_id" not in stored:
        return None
    return [str(name) for name in stored["class_names"]], [int(c) for c in stored["label_to_category_id"]]
