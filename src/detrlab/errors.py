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
