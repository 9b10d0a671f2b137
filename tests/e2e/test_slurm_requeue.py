"""SLURM requeue: the requeue signal writes hpc_ckpt_N.ckpt, and ``ckpt_path=last`` resumes from the newest checkpoint."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from detrlab import train
from detrlab.builders import resolve_resume_path
from detrlab.utils.resume import find_last_checkpoint


class SimulatedJobEnd(Exception):
    """The job being killed after SLURM's warning signal (what happens at the time limit)."""


class RequeueSignalThenStop(L.Callback):
    """Send SIGUSR1 to this process after a training batch of epoch ``at_epoch``, then end the job."""

    def __init__(self, at_epoch: int = 1) -> None:
        self.at_epoch = at_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.at_epoch and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # Lightning's SLURM handler runs in this thread
            raise SimulatedJobEnd


@pytest.fixture
def slurm_job(tmp_path, monkeypatch):
    """A single-task SLURM job environment, with a `scontrol` that records the requeue request."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    requests = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {requests}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "deta_r50_a",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_LOCALID": "0",
        "SLURM_PROCID": "0",
        "SLURM_NODEID": "0",
    }.items():
        monkeypatch.setenv(key, value)
    previous = signal.getsignal(signal.SIGUSR1)
    yield requests
    signal.signal(signal.SIGUSR1, previous)


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_resolver_takes_the_newest_of_last_and_hpc_checkpoints(tmp_path):
    run, now = tmp_path / "run", time.time()
    checkpoints = run / "checkpoints"
    assert find_last_checkpoint(checkpoints) is None
    _touch(checkpoints / "last.ckpt", now - 300)
    _touch(checkpoints / "epoch_003.ckpt", now)  # a best-AP checkpoint is never a resume point
    assert find_last_checkpoint(checkpoints) == checkpoints / "last.ckpt"
    hpc = _touch(run / "hpc_ckpt_1.ckpt", now - 200)
    assert find_last_checkpoint(checkpoints) == hpc
    newer_last = _touch(checkpoints / "last-v1.ckpt", now - 100)
    assert find_last_checkpoint(checkpoints) == newer_last
    # two HPC checkpoints of the same clock tick: the higher number is the later one
    _touch(run / "hpc_ckpt_2.ckpt", now - 50)
    latest = _touch(run / "hpc_ckpt_10.ckpt", now - 50)
    assert find_last_checkpoint(checkpoints) == latest
    assert resolve_resume_path("last", checkpoint_dir=checkpoints) == str(latest)


def test_requeue_signal_writes_an_hpc_checkpoint_that_ckpt_path_last_resumes(
    tiny_train_cfg, slurm_job, caplog
):
    run_dir = Path(tiny_train_cfg.paths.output_dir)
    with open_dict(tiny_train_cfg):
        tiny_train_cfg.trainer.max_epochs = 2
        tiny_train_cfg.callbacks.requeue_signal = {
            "_target_": f"{__name__}.RequeueSignalThenStop",
            "at_epoch": 1,
        }
    with pytest.raises(SimulatedJobEnd):
        train.run(tiny_train_cfg)

    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in run_dir.rglob("*.ckpt"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # epoch 0's, older
    assert slurm_job.read_text().split() == ["requeue", "4242"]
    saved = torch.load(hpc, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4 + 2  # epoch 0 (4 steps) and two batches of epoch 1

    # The requeued job: same run folder, ckpt_path=last.
    with open_dict(tiny_train_cfg):
        del tiny_train_cfg.callbacks["requeue_signal"]
        tiny_train_cfg.ckpt_path = "last"
    with caplog.at_level(logging.INFO):
        train.run(tiny_train_cfg)
    assert f"Resuming from {hpc}" in caplog.text
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 1 and final["global_step"] == 8
