"""Find the checkpoint to resume from and what it remembers about the run."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Key of the tracking-run ids inside a Lightning checkpoint dict.
CHECKPOINT_TRACKING_KEY = "detrlab_tracking"

_LAST_PATTERN = re.compile(r"^last(-v?\d+)?$")
_HPC_PATTERN = re.compile(r"^hpc_ckpt_(\d+)$")


def find_last_checkpoint(checkpoint_dir: str | Path, hpc_dir: str | Path | None = None) -> Path | None:
    """The newest checkpoint a run can resume from (``None`` when there is none).

    Two kinds are written during a run, and a requeued job must take whichever is newer:

    - ``last*.ckpt`` in ``checkpoint_dir``, written by ``ModelCheckpoint`` after each validation and
      by the stop callback on Ctrl-C / SIGTERM (Lightning names a second copy ``last-v1.ckpt``);
    - ``hpc_ckpt_N.ckpt``, written by Lightning's SLURM plugin on the requeue signal (SIGUSR1) into
      the trainer's ``default_root_dir``, the run folder: ``hpc_dir``, by default the parent of
      ``checkpoint_dir`` (``<run>/checkpoints``) and ``checkpoint_dir`` itself.

    The newest file (modification time) wins; between two HPC checkpoints written in the same
    clock tick, the higher ``N``.
    """
    directory = Path(checkpoint_dir)
    hpc_dirs = [Path(hpc_dir)] if hpc_dir is not None else [directory.parent, directory]
    candidates = (
        [p for p in directory.glob("*.ckpt") if _LAST_PATTERN.match(p.stem)] if directory.is_dir() else []
    )
    for folder in hpc_dirs:
        if folder.is_dir():
            candidates += [p for p in folder.glob("hpc_ckpt_*.ckpt") if _HPC_PATTERN.match(p.stem)]
    if not candidates:
        return None
    return max(set(candidates), key=_recency)


def _recency(path: Path) -> tuple[int, int]:
    match = _HPC_PATTERN.match(path.stem)
    return path.stat().st_mtime_ns, int(match.group(1)) if match else -1


def stored_tracking_ids(checkpoint_path: str | Path) -> dict[str, Any]:
    """The tracking-run ids saved in a checkpoint (``{"wandb": "<run id>"}``), or ``{}``.

    The file is memory-mapped, so only the small dict entry is read, not the weights.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", mmap=True, weights_only=False)
    return dict(checkpoint.get(CHECKPOINT_TRACKING_KEY) or {})
