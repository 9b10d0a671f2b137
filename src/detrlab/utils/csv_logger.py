"""A CSV logger whose ``metrics.csv`` survives a resumed run."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    # Lightning's writer deletes an existing metrics.csv when its folder is reused. A resumed run
    # reuses its run folder on purpose, so keep the rows: start from the file's columns and let
    # Lightning append (it rewrites the header when new columns appear).
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(next(csv.reader(handle), []))

    def _check_log_dir_exists(self) -> None:
        return None


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that appends to an existing ``metrics.csv`` instead of deleting it.

    A run resumed in its own folder (``run_name=... ckpt_path=last``) continues the same file, so
    ``metrics.csv`` holds the whole history, as the W&B and TensorBoard runs do.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
