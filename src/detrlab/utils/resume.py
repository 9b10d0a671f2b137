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


def find_last_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The most recently written ``last*.ckpt`` in ``checkpoint_dir`` (``None`` when there is none).

    ``last.ckpt`` is written by ``ModelCheckpoint(save_last=True)`` after each epoch and by the
    stop callback on Ctrl-C / SIGTERM; Lightning names a second copy ``last-v1.ckpt``.
    """
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return None
    candidates = [p for p in directory.glob("*.ckpt") if _LAST_PATTERN.match(p.stem)]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def stored_tracking_ids(checkpoint_path: str | Path) -> dict[str, Any]:
    """The tracking-run ids saved in a checkpoint (``{"wandb": "<run id>"}``), or ``{}``.

    The file is memory-mapped, so only the small dict entry is read, not the weights.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", mmap=True, weights_only=False)
    return dict(checkpoint.get(CHECKPOINT_TRACKING_KEY) or {})
