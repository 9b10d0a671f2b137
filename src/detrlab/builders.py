"""Build the run's objects (data, model, callbacks, loggers, trainer) from config nodes.

Each builder instantiates a Hydra ``_target_`` node and checks that it produced the kind of object
the run needs, so a config that points at the wrong class fails with a message naming the key.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict

from detrlab.callbacks import AtomicCheckpointIO
from detrlab.data.coco import read_category_ids
from detrlab.data.datamodule import COCO2017_LAYOUT
from detrlab.errors import CheckpointError, ConfigError, DatasetNotFoundError, DetrlabError
from detrlab.module import DetectionModule
from detrlab.utils.resume import find_last_checkpoint

log = logging.getLogger(__name__)


def _instantiate(node: DictConfig, key: str, expected: type, **kwargs):
    if node is None or "_target_" not in node:
        raise ConfigError(f"`{key}` must be a config node with a `_target_` (got {node!r}).")
    try:
        obj = hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        # A user mistake that a constructor found is reported as itself, not inside Hydra's wrapper.
        if isinstance(error.__cause__, DetrlabError):
            raise error.__cause__ from None
        raise
    if not isinstance(obj, expected):
        raise ConfigError(
            f"`{key}._target_` built a {type(obj).__name__}; it must build a {expected.__name__}."
        )
    return obj


def resolve_num_classes(cfg_data: DictConfig | None) -> None:
    """Replace ``data.num_classes: null`` by the number of categories in the dataset's annotation JSON.

    Model configs interpolate ``${data.num_classes}``, so the class count reaches the detector,
    criterion and post-processor without the user typing it. Runs before anything is instantiated.
    The validation JSON is read first (usually far smaller; the data module checks that both splits
    have the same categories). A set ``num_classes`` is left alone (the data module checks it).
    """
    if cfg_data is None or "num_classes" not in cfg_data or cfg_data.num_classes is not None:
        return
    tried = []
    for key in ("val_annotations", "train_annotations"):
        if key not in cfg_data.keys():  # noqa: SIM118 (`in cfg_data` is False for `???` values)
            continue
        if OmegaConf.is_missing(cfg_data, key):
            raise ConfigError(
                f"data.{key} is not set: add data.{key}=/path/to/instances.json to the command."
            )
        path = cfg_data[key]
        if path is None and cfg_data.get("root") is not None:
            path = Path(str(cfg_data.root)) / COCO2017_LAYOUT[key]
        if path is not None:
            tried.append(str(path))
            if Path(str(path)).is_file():
                with open_dict(cfg_data):
                    cfg_data.num_classes = len(read_category_ids(path))
                log.info("data.num_classes=%d (categories of %s)", cfg_data.num_classes, path)
                return
    raise DatasetNotFoundError(
        "data.num_classes is null, so it is read from the annotation file, but no annotation file was "
        f"found (tried: {tried or 'none configured'}). Point data.val_annotations / data.train_annotations "
        "at the COCO JSON files, or set data.num_classes=<number of categories>."
    )


def build_datamodule(cfg_data: DictConfig) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` (a ``LightningDataModule``)."""
    return _instantiate(cfg_data, "data", L.LightningDataModule)


def build_model(cfg_model: DictConfig) -> DetectionModule:
    """Instantiate ``cfg.model`` (a :class:`DetectionModule` with detector, criterion, postprocess)."""
    return _instantiate(cfg_model, "model", DetectionModule)


def build_callbacks(cfg_callbacks: DictConfig | None, run_config: DictConfig | None = None) -> list[Callback]:
    """Instantiate every ``_target_`` entry of ``cfg.callbacks``; entries set to null are skipped.

    Every callback of a run is an entry there (``conf/callbacks/default.yaml``); nothing is added
    here. An entry with ``_partial_: true`` is a callback that records the run itself: it is
    completed with the composed config as ``run_config=`` (which a config node cannot interpolate).
    """
    callbacks: list[Callback] = []
    for name, node in (cfg_callbacks or {}).items():
        if node is None or "_target_" not in node:
            continue
        built = hydra.utils.instantiate(node, _convert_="all")
        if isinstance(built, functools.partial):
            if run_config is None:
                raise ConfigError(
                    f"callbacks.{name} (_partial_: true) needs the run config: call "
                    "build_callbacks(cfg.callbacks, run_config=cfg)."
                )
            built = built(run_config=run_config)
        if not isinstance(built, Callback):
            raise ConfigError(
                f"`callbacks.{name}._target_` built a {type(built).__name__}; it must build a Callback."
            )
        callbacks.append(built)
    return callbacks


def build_loggers(
    cfg_logger: DictConfig | None, extra_arguments: dict[str, dict] | None = None
) -> list[Logger]:
    """Instantiate every ``_target_`` entry of ``cfg.logger`` (``logger=null`` disables logging).

    ``extra_arguments[name]`` are keyword arguments added to entry ``name`` (e.g. the run id of a
    resumed W&B run), so the config itself is never edited.
    """
    loggers: list[Logger] = []
    for name, node in (cfg_logger or {}).items():
        if node is not None and "_target_" in node:
            loggers.append(
                _instantiate(node, f"logger.{name}", Logger, **(extra_arguments or {}).get(name, {}))
            )
    return loggers


def build_trainer(cfg_trainer: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> L.Trainer:
    """Instantiate ``cfg.trainer`` with the given callbacks and loggers.

    Unless ``trainer.plugins`` is configured, checkpoints are written atomically
    (:class:`detrlab.callbacks.AtomicCheckpointIO`), so a killed run never leaves a broken file.
    """
    if "_target_" not in cfg_trainer:
        raise ConfigError("`trainer` must have a `_target_` (lightning.pytorch.Trainer).")
    extra = {} if cfg_trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    return hydra.utils.instantiate(
        cfg_trainer, callbacks=callbacks, logger=loggers or False, _convert_="all", **extra
    )


def resolve_resume_path(ckpt_path: str | None, checkpoint_dir: str | Path | None = None) -> str | None:
    """Check a ``ckpt_path=`` override before Lightning sees it.

    ``None`` starts from scratch; a path must exist (relative paths are taken from the directory
    the command was started in, which is also the process's working directory). ``last`` is the
    newest ``last*.ckpt`` in ``checkpoint_dir`` (the run's ``ModelCheckpoint`` folder); when there is
    none yet the run starts from scratch, so a requeued job can always pass ``ckpt_path=last``.
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        last = find_last_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
        if last is None:
            log.warning(
                "ckpt_path=last: no last checkpoint in %s yet, starting from scratch. To continue an earlier "
                "run, rerun with its run_name=... (same run folder) or pass ckpt_path=<path to its .ckpt>.",
                checkpoint_dir,
            )
            return None
        ckpt_path = last
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path} does not exist. Pass the path of a .ckpt file written by a previous run, "
            f"e.g. ckpt_path=outputs/train/runs/<date>/checkpoints/last.ckpt."
        )
    log.info("Resuming from %s", path)
    return str(path)
