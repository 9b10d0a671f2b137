"""Lightning callbacks specific to detrlab."""

from detrlab.callbacks.config_in_checkpoint import ConfigInCheckpoint

__all__ = ["ConfigInCheckpoint"]
