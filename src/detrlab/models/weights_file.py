"""Local pretrained-weights files of the backbones: nothing is downloaded, a missing file is named."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["require_weights_file"]


def require_weights_file(path: str | os.PathLike, what: str, source: str) -> Path:
    """The weights file at ``path``, checked before any network is built.

    Args:
        path: the configured ``model.detector.backbone.pretrained``.
        what: the backbone, for the message (``"ResNet"``, ``"Swin"``).
        source: where the user can get the file, for the message.

    Raises:
        FileNotFoundError: no file at ``path``; the message says where to get one and how to pass it.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"{what} weights file not found: {str(file)!r}. Weights are never downloaded here: download "
            f"{source} on a machine with internet and pass model.detector.backbone.pretrained=/path/to/file "
            "(or pretrained=null for random init)."
        )
    return file
