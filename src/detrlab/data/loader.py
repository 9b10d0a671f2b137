"""The DataLoader of detrlab's data modules: a worker that stops answering is a user-facing error.

``torch.utils.data.DataLoader(timeout=T)`` raises a bare ``RuntimeError("DataLoader timed out after
T seconds")`` when no batch arrives from a worker in ``T`` seconds. That message names neither the
setting nor the usual causes, so the loader here re-raises it as :class:`DataLoaderTimeoutError`,
a :class:`~detrlab.errors.DetrlabError` (the entry points print it and exit 1) that keeps the
original text and adds what to check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from detrlab.errors import DetrlabError

__all__ = ["DataLoaderTimeoutError", "DetectionDataLoader"]

_TIMEOUT_MESSAGE = "DataLoader timed out after"


class DataLoaderTimeoutError(DetrlabError, RuntimeError):
    """No batch came from a data-loader worker within ``data.timeout`` seconds."""


class DetectionDataLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` whose worker time-out names ``data.timeout``."""

    def __iter__(self) -> Iterator[Any]:
        return _TimeoutReportingIterator(super().__iter__(), self)


class _TimeoutReportingIterator:
    def __init__(self, iterator: Iterator[Any], loader: DataLoader) -> None:
        self._iterator = iterator
        self._loader = loader

    def __iter__(self) -> _TimeoutReportingIterator:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._iterator)
        except RuntimeError as error:
            if _TIMEOUT_MESSAGE not in str(error):
                raise
            self._stop_the_workers()
            raise DataLoaderTimeoutError(
                f"{error} (data.timeout={self._loader.timeout:g}, data.num_workers="
                f"{self._loader.num_workers}): a data-loader worker stopped answering, as on a stalled "
                "network mount or a decoder stuck on a damaged file. Check the data source; raise "
                "data.timeout for slow storage, or set data.timeout=0 to wait without limit."
            ) from error

    def _stop_the_workers(self) -> None:
        # A hung worker would otherwise outlive the error for as long as the traceback keeps the
        # iterator alive (a notebook, a sweep's next trial), and its death would later reach torch's
        # SIGCHLD handler as "worker killed" in unrelated code. Shutting down joins the workers
        # briefly, terminates those still running, and unregisters them from that handler.
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __len__(self) -> int:
        return len(self._iterator)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # Lightning and torch read attributes of the underlying iterator (e.g. `_num_yielded`).
        return getattr(self._iterator, name)
