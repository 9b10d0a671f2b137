"""Experiment-tracking helpers: a W&B logger that goes offline by itself, and clean teardown."""

from __future__ import annotations

import logging
import netrc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)

_OFFLINE_MODES = ("offline", "dryrun")


def wandb_credentials_found() -> bool:
    """True when W&B can authenticate: ``WANDB_API_KEY`` is set or a netrc file has the W&B host.

    ``wandb login`` writes the key to ``~/.netrc`` (or the file named by ``NETRC``); the host is
    ``api.wandb.ai`` unless ``WANDB_BASE_URL`` points at a private server.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not netrc_path.is_file():
        return False
    try:
        return netrc.netrc(str(netrc_path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_should_be_offline(offline: bool | None) -> bool:
    """Resolve ``logger.wandb.offline``: an explicit bool wins, ``None`` means "decide".

    Undecided runs follow ``WANDB_MODE`` (``offline``/``dryrun`` -> offline, ``online`` -> online)
    and otherwise go offline exactly when no credentials are configured, so an air-gapped or
    not-logged-in machine still records the run instead of failing or prompting for a key.
    """
    if offline is not None:
        return bool(offline)
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in _OFFLINE_MODES:
        return True
    if mode == "online":
        return False
    return not wandb_credentials_found()


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    entity: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    job_type: str | None = "train",
    id: str | None = None,
    offline: bool | None = None,
    log_model: bool | str = False,
) -> Logger:
    """A Lightning ``WandbLogger`` for ``project`` whose files go under ``save_dir/wandb``.

    Args:
        project, entity, group, tags, job_type, name: W&B run attributes.
        save_dir: the run's output folder.
        id: W&B run id; set to continue an existing run (resuming fills it from the checkpoint).
        offline: ``True``/``False`` force the mode; ``None`` picks offline when no API key is
            configured (see :func:`wandb_should_be_offline`) and prints how to upload later.
        log_model: upload checkpoints as W&B artifacts (online only).
    """
    from lightning.pytorch.loggers import WandbLogger

    is_offline = wandb_should_be_offline(offline)
    if is_offline and log_model:
        log.warning(
            "W&B is offline: logger.wandb.log_model=%s is ignored (nothing can be uploaded).", log_model
        )
        log_model = False
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if is_offline and offline is None:
        message = (
            "W&B: no API key configured (WANDB_API_KEY, `wandb login`), logging offline to "
            f"{Path(save_dir) / 'wandb'}. Upload later with: wandb sync {Path(save_dir) / 'wandb'}/offline-run-*"
        )
        log.warning(message)
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        entity=entity,
        group=group,
        tags=list(tags) if tags else None,
        job_type=job_type,
        id=id,
        offline=is_offline,
        log_model=log_model,
    )


def finish_tracking_runs() -> None:
    """Close the process's W&B run (if any), so the next job of a multirun starts its own.

    W&B keeps one global run per process; without ``wandb.finish()`` every later job of a sweep
    would log into the first job's run. Offline runs get the ``wandb sync`` command printed.
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    offline = run.settings.mode in _OFFLINE_MODES
    run_dir = Path(run.dir).parent
    wandb.finish()
    if offline:
        print(f"W&B run recorded offline in {run_dir}; upload it with: wandb sync {run_dir}")
