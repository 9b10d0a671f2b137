"""Log the per-class AP of each validation to every logger."""

from __future__ import annotations

import logging
import math

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)

#: Prefix of the per-class scalars: ``val/AP_per_class/<class name>``.
PER_CLASS_PREFIX = "val/AP_per_class"


class PerClassAPLogger(L.Callback):
    """After each validation, log AP@[.50:.95] per category.

    Every logger gets one scalar per class (``val/AP_per_class/<name>``; classes without ground
    truth in the validation set have no AP and are left out). W&B also gets the table as a
    ``wandb.Table`` and TensorBoard as a Markdown text panel, so the classes can be compared side
    by side. Runs on rank 0 in ``on_validation_end``, after the module has computed the metrics of
    all ranks' predictions (callbacks' ``on_validation_epoch_end`` would run before the module's).
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluator = pl_module.evaluator
        if trainer.sanity_checking or not trainer.is_global_zero or evaluator is None:
            return
        if not hasattr(evaluator, "per_class_ap"):
            return
        per_class = evaluator.per_class_ap()
        defined = {name: ap for name, ap in per_class.items() if not math.isnan(ap)}
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics({f"{PER_CLASS_PREFIX}/{name}": ap for name, ap in defined.items()}, step=step)
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key="val/AP_per_class_table",
                    columns=["class", "AP"],
                    data=[[name, ap] for name, ap in per_class.items()],
                    step=step,
                )
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("val/AP_per_class", markdown_table(per_class), global_step=step)
        log.info("Per-class AP, epoch %d:\n%s", trainer.current_epoch, markdown_table(per_class))


def markdown_table(per_class: dict[str, float]) -> str:
    """``| class | AP |`` table; classes without ground truth show ``n/a``."""
    rows = ["| class | AP |", "|---|---|"]
    rows += [f"| {name} | {'n/a' if math.isnan(ap) else f'{ap:.4f}'} |" for name, ap in per_class.items()]
    return "\n".join(rows)
