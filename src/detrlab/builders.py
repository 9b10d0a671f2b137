"""Build the run's objects (data, model, callbacks, loggers, trainer) from config nodes.

Each builder instantiates a Hydra ``_target_`` node and checks that it produced the kind of object
the run needs, so a config that points at the wrong class fails with a message naming the key.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from detrlab.callbacks import ConfigInCheckpoint
from detrlab.errors import CheckpointError, ConfigError
from detrlab.module import DetectionModule

log = logging.getLogger(__name__)


def _instantiate(node: DictConfig, key: str, expected: type):
    if node is None or "_target_" not in node:
        raise ConfigError(f"`{key}` must be a config node with a `_target_` (got {node!r}).")
    obj = hydra.utils.instantiate(node, _convert_="all")
    if not isinstance(obj, expected):
        raise ConfigError(
            f"`{key}._target_` built a {type(obj).__name__}; it must build a {expected.__name__}."
        )
    return obj


def build_datamodule(cfg_data: DictConfig) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` (a ``LightningDataModule``)."""
    return _instantiate(cfg_data, "data", L.LightningDataModule)


def build_model(cfg_model: DictConfig) -> DetectionModule:
    """Instantiate ``cfg.model`` (a :class:`DetectionModule` with detector, criterion, postprocess)."""
    return _instantiate(cfg_model, "model", DetectionModule)


def build_callbacks(cfg_callbacks: DictConfig | None, run_config: DictConfig | None = None) -> list[Callback]:
    """Instantiate every ``_target_`` entry of ``cfg.callbacks``; entries set to null are skipped.

    With ``run_config``, a :class:`ConfigInCheckpoint` is added so checkpoints carry the config.
    """
    callbacks: list[Callback] = []
    for name, node in (cfg_callbacks or {}).items():
        if node is not None and "_target_" in node:
            callbacks.append(_instantiate(node, f"callbacks.{name}", Callback))
    if run_config is not None:
        callbacks.append(ConfigInCheckpoint(run_config))
    return callbacks


def build_loggers(cfg_logger: DictConfig | None) -> list[Logger]:
    """Instantiate every ``_target_`` entry of ``cfg.logger`` (``logger=null`` disables logging)."""
    loggers: list[Logger] = []
    for name, node in (cfg_logger or {}).items():
        if node is not None and "_target_" in node:
            loggers.append(_instantiate(node, f"logger.{name}", Logger))
    return loggers


def build_trainer(cfg_trainer: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> L.Trainer:
    """Instantiate ``cfg.trainer`` with the given callbacks and loggers."""
    if "_target_" not in cfg_trainer:
        raise ConfigError("`trainer` must have a `_target_` (lightning.pytorch.Trainer).")
    return hydra.utils.instantiate(cfg_trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")


def resolve_resume_path(ckpt_path: str | None) -> str | None:
    """Check a ``ckpt_path=`` override before Lightning sees it.

    ``None`` starts from scratch; a path must exist (relative paths are taken from the directory
    the command was started in, which is also the process's working directory).
    """
    if ckpt_path is None:
        return None
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path} does not exist. Pass the path of a .ckpt file written by a previous run, "
            f"e.g. ckpt_path=outputs/train/runs/<date>/checkpoints/last.ckpt."
        )
    log.info("Resuming from %s", path)
    return str(path)
