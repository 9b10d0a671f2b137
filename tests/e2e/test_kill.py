"""Killing a training process: SIGKILL at a random moment leaves a loadable, resumable last.ckpt;
Ctrl-C (SIGINT) and SIGTERM save the state before the process exits."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from detrlab import train
from tests.helpers import CONFIG_DIR, TINY_OVERRIDES

REPO = CONFIG_DIR.parent


def start_training(run_dir: Path, data_dir: Path, checkpoint_overrides: list[str]) -> subprocess.Popen:
    """``python train.py`` on the tiny data, running (practically) forever, checkpointing as told."""
    command = [
        sys.executable,
        "train.py",
        *TINY_OVERRIDES,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=10000",
        "trainer.check_val_every_n_epoch=10000",
        "callbacks.model_checkpoint.monitor=null",
        *checkpoint_overrides,
    ]
    log = (run_dir.parent / f"{run_dir.name}.log").open("w")
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(path_glob: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(path_glob.parent.glob(path_glob.name)):
        if process.poll() is not None:
            raise AssertionError(f"training exited early with status {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {path_glob} after {timeout} s")
        time.sleep(0.1)


def kill_at_random_moment_and_resume(
    tmp_path, synthetic_data_dir, tiny_train_cfg, rng: random.Random
) -> None:
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    process = start_training(
        run_dir,
        synthetic_data_dir,
        [
            "+callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.model_checkpoint.save_top_k=0",
            "callbacks.model_checkpoint.save_last=true",
        ],
    )
    try:
        wait_for(last, process)
        # The checkpoint is rewritten after every step: a random moment often falls inside a write.
        time.sleep(rng.uniform(0.0, 2.0))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] >= 1
    with open_dict(tiny_train_cfg):
        tiny_train_cfg.ckpt_path = str(last)
        # One more full epoch after the interrupted one: a checkpoint taken after the epoch's last
        # batch leaves nothing of that epoch to run, and the full epoch is what writes last.ckpt.
        tiny_train_cfg.trainer.max_epochs = saved["epoch"] + 2
    train.run(tiny_train_cfg)
    resumed = torch.load(
        Path(tiny_train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=False,
    )
    # The resumed run finished the interrupted epoch and one more: 4 steps per epoch.
    assert resumed["global_step"] == 4 * (saved["epoch"] + 2)


def test_sigkill_leaves_a_loadable_checkpoint_that_resumes(tmp_path, synthetic_data_dir, tiny_train_cfg):
    kill_at_random_moment_and_resume(tmp_path, synthetic_data_dir, tiny_train_cfg, random.Random())


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
def test_sigkill_repeatedly(tmp_path, synthetic_data_dir, tiny_train_cfg, trial):
    kill_at_random_moment_and_resume(tmp_path, synthetic_data_dir, tiny_train_cfg, random.Random(trial))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_saves_before_exiting(tmp_path, synthetic_data_dir, signum):
    run_dir = tmp_path / "run"
    # Step checkpoints under another name show that training runs; last.ckpt only comes from the signal.
    process = start_training(
        run_dir,
        synthetic_data_dir,
        [
            "+callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.model_checkpoint.save_top_k=-1",
            "callbacks.model_checkpoint.save_last=false",
            "callbacks.model_checkpoint.filename='step_{step}'",
        ],
    )
    try:
        wait_for(run_dir / "checkpoints" / "step_*.ckpt", process)
        assert not (run_dir / "checkpoints" / "last.ckpt").exists()
        os.killpg(process.pid, signum) if signum == signal.SIGINT else process.send_signal(signum)
        process.wait(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] >= 1
    assert saved["optimizer_states"] and saved["loops"]
