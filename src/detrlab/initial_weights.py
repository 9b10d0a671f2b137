"""``init_from=...``: start training from the weights of another run or a published model.

The source is a detrlab checkpoint (a training run's ``.ckpt`` or one written by
``python -m detrlab.convert``), a transformers ``save_pretrained`` directory or an original-repository
``.pth`` (both imported with :mod:`detrlab.convert`). Only the detector's weights are taken: the
optimizer, schedule and epoch start fresh (use ``ckpt_path=`` to resume a run instead).

Fine-tuning on a dataset with another number of classes is the common case: the classification
heads (``class_embed``), whose shape depends on the class count, are re-initialised; every other
weight must be present in the source with the same shape, or the run stops with the list of
differences (a different architecture is a config mistake, not something to half-load).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from detrlab.callbacks.ema import RAW_WEIGHTS_KEY
from detrlab.errors import CheckpointError

__all__ = ["InitReport", "load_initial_weights", "read_detector_weights"]

log = logging.getLogger(__name__)

#: Name fragment of the parameters whose shape follows the number of classes.
CLASS_HEAD_KEY = "class_embed"

_DETECTOR_PREFIX = "detector."


@dataclass
class InitReport:
    """What :func:`load_initial_weights` did, by detector state-dict key."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Initial weights from {self.source}: {len(self.loaded)} tensors loaded"]
        if self.reinitialised:
            lines.append(
                f"  re-initialised (class count differs): {len(self.reinitialised)} tensors: "
                + ", ".join(self.reinitialised[:6])
                + (" ..." if len(self.reinitialised) > 6 else "")
            )
        if self.unused:
            lines.append(f"  not used (class heads of the source): {', '.join(self.unused[:6])}")
        return "\n".join(lines)


def read_detector_weights(source: str | Path) -> dict[str, Tensor]:
    """The detector state dict of a detrlab checkpoint, transformers directory or original ``.pth``."""
    path = Path(str(source)).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"init_from={path} does not exist: pass a detrlab .ckpt, a transformers model "
            "directory or an original .pth checkpoint."
        )
    if path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
        if isinstance(state, dict) and any(key.startswith(_DETECTOR_PREFIX) for key in state):
            if RAW_WEIGHTS_KEY in checkpoint:
                log.info("init_from=%s: starting from its exponential moving average (EMA) weights", path)
            return {
                key.removeprefix(_DETECTOR_PREFIX): value
                for key, value in state.items()
                if key.startswith(_DETECTOR_PREFIX)
            }
    # Anything else is a foreign checkpoint; the converter explains what it cannot read.
    from detrlab.convert import load_detector

    return load_detector(path).state_dict()


def load_initial_weights(detector: nn.Module, source: str | Path) -> InitReport:
    """Copy the weights of ``source`` into ``detector`` (see the module docstring for the rules).

    Raises:
        CheckpointError: keys missing from the source, or shape differences outside the class heads,
            listed in full.
    """
    weights = read_detector_weights(source)
    target = detector.state_dict()
    report = InitReport(source=str(source))
    missing, mismatched = [], []
    to_load: dict[str, Tensor] = {}
    for key, value in target.items():
        if key not in weights:
            if CLASS_HEAD_KEY in key:
                report.reinitialised.append(key)
            else:
                missing.append(key)
        elif weights[key].shape != value.shape:
            if CLASS_HEAD_KEY in key:
                report.reinitialised.append(key)
            else:
                mismatched.append(f"{key}: source {tuple(weights[key].shape)} vs model {tuple(value.shape)}")
        else:
            to_load[key] = weights[key]
            report.loaded.append(key)
    unexpected = [key for key in weights if key not in target]
    report.unused = [key for key in unexpected if CLASS_HEAD_KEY in key]
    unexpected = [key for key in unexpected if CLASS_HEAD_KEY not in key]
    if missing or mismatched or unexpected:
        problems = []
        if mismatched:
            problems.append(f"shapes differ: {'; '.join(mismatched)}")
        if missing:
            problems.append(f"not in the source: {', '.join(missing)}")
        if unexpected:
            problems.append(f"not in the model: {', '.join(unexpected)}")
        raise CheckpointError(
            f"init_from={source} does not fit the configured model ({' | '.join(problems)}). Choose "
            "the model config the weights were trained with (same backbone, hidden_dim, layers, "
            "queries, feature levels); only the class count may differ."
        )
    detector.load_state_dict(to_load, strict=False)
    return report
