"""A data-loader worker that hangs ends the run within ``data.timeout`` instead of stalling it."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time

import lightning as L
import pytest
import torch.multiprocessing
from hydra.core.global_hydra import GlobalHydra

from detrlab.builders import build_datamodule, build_model
from detrlab.data.loader import DataLoaderTimeoutError
from tests.helpers import TINY_OVERRIDES, compose_config

TIMEOUT_S = 3


class FreezeTheWorkers(L.Callback):
    """After the first batch, stop (SIGSTOP) every data-loader worker: a hung worker, as on a stuck mount."""

    def __init__(self) -> None:
        self.frozen: list[int] = []
        self.frozen_at: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0 and not self.frozen:
            for worker in multiprocessing.active_children():
                os.kill(worker.pid, signal.SIGSTOP)
                self.frozen.append(worker.pid)
            self.frozen_at = time.monotonic()

    def resume(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def still_running(self) -> list[int]:
        alive = {child.pid for child in multiprocessing.active_children()}  # also reaps the exited
        return [pid for pid in self.frozen if pid in alive]

    def release(self) -> None:
        for pid in self.frozen:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)


@pytest.fixture
def tensors_shared_by_file_name():
    """Batches travel through named shared memory, not file descriptors.

    With descriptor passing the receiving side handshakes with the sending worker, and a worker
    frozen in the middle of that exchange would block the test itself, outside the DataLoader's
    timeout. Named shared memory needs nothing from the worker once a batch is queued.
    """
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    yield
    torch.multiprocessing.set_sharing_strategy(previous)


def test_hung_worker_ends_the_run_within_the_timeout(
    tmp_path, synthetic_data_dir, tensors_shared_by_file_name
):
    cfg = compose_config(
        "train",
        [
            *TINY_OVERRIDES,
            f"paths.data_dir={synthetic_data_dir}",
            "data.num_workers=1",
            f"data.timeout={TIMEOUT_S}",
        ],
        tmp_path,
    )
    GlobalHydra.instance().clear()
    datamodule, model = build_datamodule(cfg.data), build_model(cfg.model)
    assert datamodule.timeout == TIMEOUT_S
    freezer = FreezeTheWorkers()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[freezer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    try:
        with pytest.raises(
            DataLoaderTimeoutError, match=rf"DataLoader timed out after {TIMEOUT_S}(\.0)? seconds"
        ) as raised:
            trainer.fit(model, datamodule=datamodule)
        waited = time.monotonic() - freezer.frozen_at
        # The error stopped the workers: once resumed, the hung one exits instead of lingering.
        freezer.resume()
        deadline = time.monotonic() + 15
        while freezer.still_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        lingering = freezer.still_running()
    finally:
        freezer.release()
    assert freezer.frozen, "no data-loader worker was running"
    # the message names the setting, as the entry points print it (exit 1, no traceback)
    assert f"data.timeout={TIMEOUT_S}" in str(raised.value) and "data.num_workers=1" in str(raised.value)
    # Batches the worker had prefetched are consumed first; then the wait is the timeout itself.
    assert waited < TIMEOUT_S + 20
    assert not lingering, f"data-loader workers {lingering} outlived the time-out error"


def test_the_documented_timeout_default_is_the_constructors():
    import inspect

    from detrlab.data.datamodule import CocoDataModule

    assert inspect.signature(CocoDataModule).parameters["timeout"].default == 600
