"""Exceptions for problems in what the user gave us (configs, datasets, checkpoints).

The entry points print these as a one-paragraph message instead of a stack trace: the message
already says what was wrong, where, and how to fix it. Bugs in our own code keep their traceback.
"""


class DetrlabError(Exception):
    """A problem with the user's input that the message fully explains."""


class DatasetNotFoundError(DetrlabError, FileNotFoundError):
    """A dataset path (image folder or annotation file) does not exist."""


class ConfigError(DetrlabError, ValueError):
    """A configuration value or combination of values that cannot work."""


class CheckpointError(DetrlabError):
    """A checkpoint that cannot be found or does not match the model."""


class DatasetValidationError(DetrlabError, ValueError):
    """An annotation file that is not valid COCO, or whose entries are inconsistent."""


class CorruptImageError(DetrlabError):
    """An image file that exists but cannot be decoded (truncated, corrupt, not an image).

    Attributes:
        path: the file (``None`` when the error is not about one file).
        reason: the decoder's short explanation.
    """

    def __init__(self, message: str, path: object = None, reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class NonFiniteLossError(DetrlabError, FloatingPointError):
    """Training produced non-finite losses or gradients too many steps in a row."""


class AttentionImplementationError(ConfigError):
    """An ``attention_implementation`` setting with no kernel for the tensors' device (or none at all)."""


class KernelUnavailableError(DetrlabError, RuntimeError):
    """The compiled deformable-attention kernel is required (``DETRLAB_OPS=require``) but failed to build or load."""
