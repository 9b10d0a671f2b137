"""Precision-recall, F1-confidence and confusion-matrix plots after each validation."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure

from detrlab.evaluation.plots import evaluation_figures, figure_to_array, save_figures

log = logging.getLogger(__name__)


class EvaluationPlots(L.Callback):
    """Draws the evaluation figures of every validation epoch from the module's COCO evaluator.

    PNG files go to ``<output_dir>/epoch_<NNN>/`` (``pr_curve_iou50``, ``pr_curve_iou50_95``,
    ``f1_confidence``, ``confusion_matrix``); TensorBoard gets them as images tagged
    ``val/plots/<name>`` and W&B under the keys ``val/plots/<name>``. Runs on global rank 0 in
    ``on_validation_end``, after the module has computed the metrics of all ranks' predictions
    (the evaluator holds every rank's detections then); sanity-check validations are skipped.

    Args:
        output_dir: folder of the PNG files (the run folder's ``plots/`` in the default config).
        iou_threshold: IoU at which a detection covers a box, for the confusion matrix.
        score_threshold: detections below this confidence are left out of the confusion matrix.
    """

    def __init__(
        self, output_dir: str | Path, iou_threshold: float = 0.5, score_threshold: float = 0.3
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"EvaluationPlots: iou_threshold must be in (0, 1], got {iou_threshold}")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"EvaluationPlots: score_threshold must be in [0, 1], got {score_threshold}")
        self.output_dir = Path(output_dir)
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluator = getattr(pl_module, "evaluator", None)
        if trainer.sanity_checking or not trainer.is_global_zero or evaluator is None:
            return
        figures = evaluation_figures(evaluator, self.iou_threshold, self.score_threshold)
        folder = self.output_dir / f"epoch_{trainer.current_epoch:03d}"
        save_figures(figures, folder)
        for logger in trainer.loggers:
            send_figures(logger, figures, trainer.global_step)
        log.info("Evaluation plots written to %s", folder)


def send_figures(logger: Logger, figures: dict[str, Figure], step: int) -> None:
    """Log the figures as images to TensorBoard or W&B; other loggers are skipped."""
    if isinstance(logger, TensorBoardLogger):
        for name, figure in figures.items():
            logger.experiment.add_image(
                f"val/plots/{name}", figure_to_array(figure), global_step=step, dataformats="HWC"
            )
    elif isinstance(logger, WandbLogger):
        for name, figure in figures.items():
            logger.log_image(key=f"val/plots/{name}", images=[figure_to_array(figure)], step=step)
