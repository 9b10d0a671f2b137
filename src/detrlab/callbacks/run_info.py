"""Record what a run is: its resolved config, code version, model size and effective batch size."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from detrlab.utils.git_info import git_state
from detrlab.utils.model_summary import parameter_counts

log = logging.getLogger(__name__)


def effective_batch(trainer: L.Trainer, batch_size_per_device: int | None) -> dict[str, Any]:
    """World size, per-device and effective batch size, and the learning rate of each param group.

    The effective batch is ``batch_size x devices x nodes x accumulate_grad_batches``. Learning
    rates are not rescaled with it: the recipes state the rates for their own effective batch
    (e.g. DETR: 1e-4 for 8 devices x 2 images), so changing the device count changes the
    effective batch at the same rate unless ``model.optim.lr`` is changed too.
    """
    world_size = trainer.world_size
    accumulate = trainer.accumulate_grad_batches
    info: dict[str, Any] = {
        "world_size": world_size,
        "num_nodes": trainer.num_nodes,
        "accumulate_grad_batches": accumulate,
        "batch_size_per_device": batch_size_per_device,
        "effective_batch_size": None
        if batch_size_per_device is None
        else batch_size_per_device * world_size * accumulate,
    }
    for optimizer in trainer.optimizers:
        for index, group in enumerate(optimizer.param_groups):
            info[f"lr/{group.get('name', f'group{index}')}"] = group["lr"]
    return info


class RunInfoLogger(L.Callback):
    """Send the run record to every logger as hyper-parameters, once per fit (rank 0).

    Logged keys: the resolved config (every group, nested as composed), ``run/git_commit``,
    ``run/git_dirty``, ``run/world_size``, ``run/effective_batch_size`` and the learning rate of
    each parameter group (``run/lr/<group>``), and ``model/params_total`` / ``model/params_trainable``.
    The same figures are written to the run log.

    Args:
        run_config: the composed run config (interpolations are resolved here).
    """

    def __init__(self, run_config: DictConfig) -> None:
        self.config = {
            key: OmegaConf.to_container(run_config[key], resolve=True)
            if isinstance(run_config[key], DictConfig)
            else run_config[key]
            for key in run_config
            if key != "hydra"
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        batch = effective_batch(trainer, getattr(datamodule, "batch_size", None))
        detector = pl_module.detector
        counts = parameter_counts(detector)
        git = git_state()
        record = {
            **self.config,
            "run": {"git_commit": git["commit"], "git_dirty": git["dirty"], **batch},
            "model_size": {"params_total": counts["total"], "params_trainable": counts["trainable"]},
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(record)
        if trainer.is_global_zero:
            rates = ", ".join(
                f"{key[3:]}={value:.3g}" for key, value in batch.items() if key.startswith("lr/")
            )
            log.info(
                "Effective batch %s = %s per device x %d device(s) x %d accumulation; learning rates: %s; "
                "%d parameters (%d trainable); code at %s%s",
                batch["effective_batch_size"],
                batch["batch_size_per_device"],
                batch["world_size"],
                batch["accumulate_grad_batches"],
                rates,
                counts["total"],
                counts["trainable"],
                git["commit"],
                " (uncommitted changes)" if git["dirty"] else "",
            )
