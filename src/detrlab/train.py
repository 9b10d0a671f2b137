"""Training run: build everything from the composed config, fit, report the validation metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from detrlab.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
    resolve_num_classes,
    resolve_resume_path,
)
from detrlab.callbacks.ema import add_resume_guard
from detrlab.config_validation import validate_run_config
from detrlab.initial_weights import load_initial_weights
from detrlab.results_plot import write_results_plot
from detrlab.utils.config_tree import print_config_tree
from detrlab.utils.model_summary import count_parameters
from detrlab.utils.resume import stored_tracking_ids
from detrlab.utils.tf32 import apply_tf32
from detrlab.utils.tracking import finish_tracking_runs

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train the configured model and validate it every ``check_val_every_n_epoch`` epochs.

    Args:
        cfg: the composed ``train.yaml`` config.

    Returns:
        The final ``trainer.callback_metrics`` as floats (``val/AP``, ``val/AP50``, losses, ...);
        the value under ``cfg.optimized_metric`` is what hyper-parameter sweeps maximise.
    """
    output_dir = Path(cfg.paths.output_dir)
    # Config conflicts first: resolving the class count already reads the annotation file.
    validate_run_config(cfg)
    resolve_num_classes(cfg.get("data"))
    if cfg.get("print_config", True):
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    save_resolved_config(cfg, output_dir / "resolved_config.yaml")

    # `is not None`, so that seed=0 seeds too.
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)

    apply_tf32(cfg.get("tf32"))
    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg.model)
    if cfg.get("init_from"):
        report = load_initial_weights(model.detector, cfg.init_from)
        log.info("%s", report.summary())
    log.info("Model: %s", count_parameters(model.detector))
    # Without ema=on, a checkpoint written with an EMA resumes from its raw weights, not the average.
    callbacks = add_resume_guard(build_callbacks(cfg.get("callbacks"), run_config=cfg))
    ckpt_path = resolve_resume_path(cfg.get("ckpt_path"), checkpoint_dir=checkpoint_folder(cfg))
    resumed_runs = continued_tracking_runs(cfg, ckpt_path) if ckpt_path is not None else {}
    loggers = build_loggers(cfg.get("logger"), extra_arguments=resumed_runs)
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, loggers=loggers)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        # Each job of a multirun must open its own tracking run, also after a failed job.
        finish_tracking_runs()

    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
    if trainer.is_global_zero:
        report_final_metrics(metrics, trainer)
        plot_run_results(trainer, output_dir / "results.png")
    return metrics


def checkpoint_folder(cfg: DictConfig) -> Path:
    """Where this run's ``ModelCheckpoint`` writes (``ckpt_path=last`` looks there)."""
    node = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if node is not None and node.get("dirpath"):
        return Path(str(node.dirpath))
    return Path(cfg.paths.output_dir) / "checkpoints"


def continued_tracking_runs(cfg: DictConfig, ckpt_path: str) -> dict[str, dict]:
    """Logger arguments that log into the W&B run stored in the checkpoint: ``{"wandb": {"id": ...}}``,
    empty when ``logger.wandb.id`` is given or the checkpoint has no run id."""
    wandb_node = (cfg.get("logger") or {}).get("wandb")
    if wandb_node is None or wandb_node.get("id") is not None:
        return {}
    run_id = stored_tracking_ids(ckpt_path).get("wandb")
    if not run_id:
        return {}
    log.info("Continuing W&B run %s from the checkpoint", run_id)
    return {"wandb": {"id": run_id}}


@rank_zero_only
def save_resolved_config(cfg: DictConfig, path: Path) -> None:
    """Write the config with every interpolation resolved (what the run really used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    resolved = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
        for key in cfg
        if key != "hydra"
    }
    OmegaConf.save(OmegaConf.create(resolved), path)


def plot_run_results(trainer: L.Trainer, path: Path) -> Path | None:
    """Draw the CSV logger's ``metrics.csv`` (losses and COCO metrics per epoch) into ``path``.

    Runs without a CSV logger, or whose logger wrote nothing (``fast_dev_run``), get no picture.
    """
    csv_files = [
        Path(logger.log_dir) / "metrics.csv" for logger in trainer.loggers if isinstance(logger, CSVLogger)
    ]
    existing = [file for file in csv_files if file.is_file()]
    if not existing:
        log.info("No metrics.csv was written (add logger=csv to the command), so there is no results.png.")
        return None
    write_results_plot(existing[0], path)
    log.info("Losses and COCO metrics per epoch drawn to %s", path)
    return path


def report_final_metrics(metrics: dict[str, float], trainer: L.Trainer) -> None:
    """Print the last validation's AP figures and where the best checkpoint is."""
    if "val/AP" in metrics:
        log.info(
            "Final validation (epoch %d): AP %.4f  AP50 %.4f  AP75 %.4f",
            trainer.current_epoch - 1,
            metrics["val/AP"],
            metrics.get("val/AP50", float("nan")),
            metrics.get("val/AP75", float("nan")),
        )
        print(f"val/AP={metrics['val/AP']:.4f} val/AP50={metrics.get('val/AP50', float('nan')):.4f}")
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_path:
        log.info(
            "Best checkpoint (%s=%.4f): %s",
            checkpoint.monitor,
            checkpoint.best_model_score or 0.0,
            checkpoint.best_model_path,
        )
