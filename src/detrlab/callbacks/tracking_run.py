"""Remember the tracking run in checkpoints, so a resumed run logs into the same dashboard run."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from detrlab.utils.resume import CHECKPOINT_TRACKING_KEY


class TrackingRunInCheckpoint(L.Callback):
    """Stores ``{"wandb": <run id>}`` in each checkpoint when a W&B logger is active.

    ``train.run`` reads it back when resuming (``ckpt_path=...``) and passes it as
    ``logger.wandb.id``, so the curves continue in the same W&B run. CSV and TensorBoard logs
    continue in the run folder by themselves.
    """

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[CHECKPOINT_TRACKING_KEY] = {"wandb": logger.version}
