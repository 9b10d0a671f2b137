"""Build one of our detectors from a foreign checkpoint and load every weight into it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from detrlab.convert.detector_config import ConvertedModel
from detrlab.convert.hf import is_hf_directory, read_hf_directory
from detrlab.convert.keymap import CheckpointConversionError, remap_state_dict
from detrlab.convert.original import read_original_checkpoint

__all__ = ["convert_checkpoint", "load_detector"]

log = logging.getLogger(__name__)


def convert_checkpoint(path: str | Path, **overrides: Any) -> tuple[nn.Module, ConvertedModel]:
    """Build the detector a foreign checkpoint describes and load its weights.

    Args:
        path: a transformers ``save_pretrained`` directory (``config.json`` + weights) of
            ``DetaForObjectDetection`` / ``DeformableDetrForObjectDetection`` / ``DetrForObjectDetection``,
            or an original-repository ``.pth`` (``{'model': state_dict, 'args': ...}``).
        overrides: detector arguments that replace the converted ones (e.g.
            ``attention_implementation="pytorch"``); ``backbone`` may be a dict of backbone arguments.

    Returns:
        ``(detector, converted)``: the detector in eval mode, and the model description
        (``converted.model_config`` is the full ``DetectionModule`` config).

    Raises:
        CheckpointConversionError: unsupported checkpoints, and keys or shapes that do not match,
            listed in full.
    """
    path = Path(path).expanduser()
    if is_hf_directory(path):
        converted, rules, state = read_hf_directory(path)
    elif path.is_file():
        converted, rules, state = read_original_checkpoint(path)
    else:
        raise CheckpointConversionError(
            f"{path} is neither a transformers model directory (with config.json) nor a checkpoint file."
        )
    converted.apply_overrides(overrides)
    detector = converted.build_detector()
    weights = remap_state_dict(state, rules, detector.state_dict(), converted.source)
    detector.load_state_dict(weights, strict=True)
    for note in converted.notes:
        log.info("%s: %s", path, note)
    return detector.eval(), converted


def load_detector(path: str | Path, **overrides: Any) -> nn.Module:
    """The detector of a foreign checkpoint, weights loaded, in eval mode (see :func:`convert_checkpoint`).

    It follows our detector contract: ``detector(images, mask)`` with ``mask`` True on padding.
    """
    return convert_checkpoint(path, **overrides)[0]
