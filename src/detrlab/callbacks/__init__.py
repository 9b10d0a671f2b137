"""Lightning callbacks specific to detrlab."""

from detrlab.callbacks.atomic_checkpoint import AtomicCheckpointIO
from detrlab.callbacks.checkpoint_on_stop import CheckpointOnStop
from detrlab.callbacks.config_in_checkpoint import ConfigInCheckpoint
from detrlab.callbacks.ema import ExponentialMovingAverage
from detrlab.callbacks.evaluation_plots import EvaluationPlots
from detrlab.callbacks.log_detections import LogDetections
from detrlab.callbacks.nonfinite_guard import NonFiniteGuard
from detrlab.callbacks.per_class_ap import PerClassAPLogger
from detrlab.callbacks.rng_state import RNGStateInCheckpoint
from detrlab.callbacks.run_info import RunInfoLogger
from detrlab.callbacks.seeding import PerRankSeed
from detrlab.callbacks.tracking_run import TrackingRunInCheckpoint

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointOnStop",
    "ConfigInCheckpoint",
    "EvaluationPlots",
    "ExponentialMovingAverage",
    "LogDetections",
    "NonFiniteGuard",
    "PerClassAPLogger",
    "PerRankSeed",
    "RNGStateInCheckpoint",
    "RunInfoLogger",
    "TrackingRunInCheckpoint",
]
