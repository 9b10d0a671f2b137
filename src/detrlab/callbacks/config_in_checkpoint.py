"""Store the run's resolved config in every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

#: Key of the stored config inside a Lightning checkpoint dict.
CHECKPOINT_CONFIG_KEY = "detrlab_config"


class ConfigInCheckpoint(L.Callback):
    """Adds the resolved ``model`` and ``data`` configs to each checkpoint.

    ``eval.py`` and ``predict.py`` rebuild the exact model from a checkpoint with it, so a user
    only passes ``ckpt_path=``; ``model=``/``data=`` overrides still win when given.
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
        checkpoint[CHECKPOINT_CONFIG_KEY] = self.stored
