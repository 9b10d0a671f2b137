"""Exact resume: interrupted-and-resumed training equals uninterrupted training; SIGTERM checkpoints."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from detrlab import train
from detrlab.builders import resolve_resume_path
from tests.helpers import TINY_OVERRIDES, compose_config


def _cfg(output_dir: Path, data_dir: Path, *extra: str):
    return compose_config(
        "train",
        [*TINY_OVERRIDES, f"paths.data_dir={data_dir}", "trainer.deterministic=true", *extra],
        output_dir=output_dir,
    )


def _last(output_dir: Path) -> dict:
    return torch.load(output_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_stop_after_one_epoch_and_resume_gives_the_uninterrupted_weights(tmp_path, synthetic_data_dir):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.run(_cfg(straight, synthetic_data_dir, "trainer.max_epochs=2"))

    train.run(_cfg(resumed, synthetic_data_dir, "trainer.max_epochs=1"))
    assert _last(resumed)["epoch"] == 0
    # `last` is this run folder's last.ckpt: same command, same folder, one more epoch.
    train.run(_cfg(resumed, synthetic_data_dir, "trainer.max_epochs=2", "ckpt_path=last"))

    expected, actual = _last(straight), _last(resumed)
    assert actual["epoch"] == expected["epoch"] == 1
    assert actual["global_step"] == expected["global_step"] == 8
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for name, weight in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], weight, rtol=0, atol=1e-6, msg=name)
    # The optimizer moments continue too, not only the weights.
    first_moment = expected["optimizer_states"][0]["state"][0]["exp_avg"]
    torch.testing.assert_close(
        actual["optimizer_states"][0]["state"][0]["exp_avg"], first_moment, rtol=0, atol=1e-6
    )

    # The resumed run appended to its metrics.csv: both epochs' validations are there.
    with (resumed / "csv" / "metrics.csv").open() as handle:
        val_rows = [row for row in csv.DictReader(handle) if row.get("val/AP")]
    assert [int(row["epoch"]) for row in val_rows] == [0, 1]


def test_ckpt_path_last_picks_the_newest_last_checkpoint(tmp_path):
    assert resolve_resume_path("last", tmp_path / "missing") is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "epoch_000.ckpt").write_bytes(b"")
    assert resolve_resume_path("last", folder) is None  # only a best-AP checkpoint: nothing to resume
    (folder / "last.ckpt").write_bytes(b"")
    (folder / "last-v1.ckpt").write_bytes(b"")
    os.utime(folder / "last.ckpt", (1, 1))
    assert resolve_resume_path("last", folder) == str(folder / "last-v1.ckpt")


class SigtermAtStep(L.Callback):
    """Sends this process SIGTERM after ``step`` optimizer steps, like a preempting scheduler."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_writes_last_checkpoint_and_the_run_continues_from_it(tmp_path, synthetic_data_dir):
    cfg = _cfg(tmp_path, synthetic_data_dir, "trainer.max_epochs=2")
    with open_dict(cfg):
        cfg.callbacks.sigterm = {"_target_": f"{__name__}.SigtermAtStep", "step": 6}
    with pytest.raises(SystemExit):
        train.run(cfg)
    interrupted = _last(tmp_path)
    # Written at the interruption (mid second epoch), not at the end of the first epoch (step 4).
    assert interrupted["global_step"] == 6
    assert interrupted["epoch"] == 1

    with open_dict(cfg):
        del cfg.callbacks.sigterm
        cfg.ckpt_path = "last"
    train.run(cfg)
    finished = _last(tmp_path)
    assert finished["epoch"] == 1
    assert finished["global_step"] == 8
