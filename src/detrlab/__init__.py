"""detrlab: a PyTorch Lightning + Hydra experiment framework for DETR-family object detectors."""

__version__ = "0.1.0"
