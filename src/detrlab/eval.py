"""Evaluation run: rebuild the model of a checkpoint and report COCO AP on a validation set."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from detrlab.builders import build_datamodule, build_trainer, resolve_num_classes
from detrlab.checkpoint import fill_from_checkpoint, load_checkpoint, model_from_checkpoint
from detrlab.config_validation import validate_run_config
from detrlab.evaluation.plots import evaluation_figures, save_figures
from detrlab.utils.config_tree import print_config_tree
from detrlab.utils.tf32 import apply_tf32

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on the validation split of ``cfg.data``.

    Prints the 12-number COCO summary, writes the predictions as a COCO results JSON to
    ``cfg.results_file`` and the precision-recall, F1-confidence and confusion-matrix PNGs to
    ``cfg.plots_dir``.

    Returns:
        The ``val/*`` metrics as floats.
    """
    checkpoint = load_checkpoint(cfg.ckpt_path)
    fill_from_checkpoint(cfg, checkpoint)
    resolve_num_classes(cfg.data)
    validate_run_config(cfg)
    if cfg.get("print_config"):
        print_config_tree(cfg)

    apply_tf32(cfg.get("tf32"))
    datamodule = build_datamodule(cfg.data)
    model = model_from_checkpoint(cfg.model, checkpoint, use_averaged=cfg.get("use_averaged_weights", True))
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
        if cfg.get("plots_dir"):
            figures = evaluation_figures(
                model.evaluator,
                iou_threshold=float(cfg.get("plots_iou_threshold", 0.5)),
                score_threshold=float(cfg.get("plots_score_threshold", 0.3)),
            )
            save_figures(figures, cfg.plots_dir)
            log.info("Evaluation plots written to %s", cfg.plots_dir)
    return metrics
