"""Import published DETR / Deformable DETR / DETA weights (transformers directories, original ``.pth``)."""

from detrlab.convert.detector_config import ConvertedModel
from detrlab.convert.keymap import CheckpointConversionError
from detrlab.convert.loader import convert_checkpoint, load_detector

__all__ = ["CheckpointConversionError", "ConvertedModel", "convert_checkpoint", "load_detector"]
