"""Store the run's resolved config and the dataset's classes in every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

#: Key of the stored config inside a Lightning checkpoint dict.
CHECKPOINT_CONFIG_KEY = "detrlab_config"


class ConfigInCheckpoint(L.Callback):
    """Adds the resolved ``model`` and ``data`` configs, and the dataset's classes, to each checkpoint.

    ``eval.py`` and ``predict.py`` rebuild the exact model from a checkpoint with it, so a user
    only passes ``ckpt_path=``; ``model=``/``data=`` overrides still win when given.

    Stored under ``checkpoint["detrlab_config"]``: ``model`` and ``data`` (plain dicts), and, when
    the trainer's data module exposes them, ``class_names`` (list[str], label order) and
    ``label_to_category_id`` (list[int], the dataset's category id of each contiguous label), so
    that predictions on new images can be named and written in the dataset's own ids.
    """

    def __init__(self, run_config: DictConfig):
        self.stored = {
            key: OmegaConf.to_container(run_config[key], resolve=True)
            for key in ("model", "data")
            if run_config.get(key) is not None
        }

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        stored = dict(self.stored)
        datamodule = getattr(trainer, "datamodule", None)
        for key in ("class_names", "label_to_category_id"):
            value = getattr(datamodule, key, None)
            if value is not None:
                stored[key] = list(value)
        checkpoint[CHECKPOINT_CONFIG_KEY] = stored
