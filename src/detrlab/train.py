"""Training run: build everything from the composed config, fit, report the validation metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from detrlab.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
    resolve_num_classes,
    resolve_resume_path,
)
from detrlab.config_validation import validate_run_config
from detrlab.initial_weights import load_initial_weights
from detrlab.utils.config_tree import print_config_tree
from detrlab.utils.model_summary import count_parameters
from detrlab.utils.resume import stored_tracking_ids
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

    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg.model)
    if cfg.model.get("init_from"):
        report = load_initial_weights(model.detector, cfg.model.init_from)
        log.info("%s", report.summary())
    log.info("Model: %s", count_parameters(model.detector))
    callbacks = build_callbacks(cfg.get("callbacks"), run_config=cfg)
    ckpt_path = resolve_resume_path(cfg.get("ckpt_path"), checkpoint_dir=checkpoint_folder(cfg))
    if ckpt_path is not None:
        continue_tracking_run(cfg, ckpt_path)
    loggers = build_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, loggers=loggers)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        # Each job of a multirun must open its own tracking run, also after a failed job.
        finish_tracking_runs()

    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
    if trainer.is_global_zero:
        report_final_metrics(metrics, trainer)
    return metrics


def checkpoint_folder(cfg: DictConfig) -> Path:
    """Where this run's ``ModelCheckpoint`` writes (``ckpt_path=last`` looks there)."""
    node = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if node is not None and node.get("dirpath"):
        return Path(str(node.dirpath))
    return Path(cfg.paths.output_dir) / "checkpoints"


def continue_tracking_run(cfg: DictConfig, ckpt_path: str) -> None:
    """Log into the W&B run stored in the checkpoint, unless ``logger.wandb.id`` is given."""
    wandb_node = (cfg.get("logger") or {}).get("wandb")
    if wandb_node is None or wandb_node.get("id") is not None:
        return
    run_id = stored_tracking_ids(ckpt_path).get("wandb")
    if run_id:
        with open_dict(cfg):
            wandb_node.id = run_id
        log.info("Continuing W&B run %s from the checkpoint", run_id)


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
