"""Experiment tracking: CSV, TensorBoard and offline W&B receive losses, LRs, AP, per-class AP, config."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import torch
import yaml

from detrlab import train
from detrlab.utils.tracking import wandb_should_be_offline
from tests.helpers import TINY_OVERRIDES, compose_config

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

_BLOCK, _HEADER = 32768, 7


def wandb_records(path: Path):
    """Records of a W&B run file (``run-<id>.wandb``: a LevelDB-style log of protobuf records).

    The file is a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte header
    (checksum u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last).
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending = _HEADER, b""
    while position + _HEADER <= len(data):
        room = _BLOCK - position % _BLOCK
        if room < _HEADER:  # block trailer padding
            position += room
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        position += _HEADER
        if kind == 0:
            break
        chunk = data[position : position + length]
        position += length
        if kind == 1:
            pending = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            pending += chunk
        record = wandb_pb.Record()
        record.ParseFromString(pending)
        yield record


def wandb_history_and_config(run_file: Path) -> tuple[list[dict], dict]:
    history, config = [], {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, config


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_goes_offline_without_credentials(no_wandb_credentials, monkeypatch, tmp_path):
    assert wandb_should_be_offline(None)
    assert not wandb_should_be_offline(False)  # explicit choice wins
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert not wandb_should_be_offline(None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_should_be_offline(None)


def test_every_logger_records_the_run(no_wandb_credentials, tmp_path, synthetic_data_dir):
    cfg = compose_config(
        "train",
        [
            *TINY_OVERRIDES,
            f"paths.data_dir={synthetic_data_dir}",
            "logger=many",
            "trainer.log_every_n_steps=1",
        ],
        output_dir=tmp_path,
    )
    metrics = train.run(cfg)
    assert 0.0 <= metrics["val/AP"] <= 1.0

    # CSV: losses, one learning rate per named param group, AP and per-class AP.
    with (tmp_path / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"train/loss_step", "train/loss_bbox_epoch", "val/AP", "val/AP50"} <= columns
    assert {"lr-AdamW/default", "lr-AdamW/backbone"} <= columns
    assert {f"val/AP_per_class/{name}" for name in ("circle", "square", "triangle")} & columns
    assert float(next(row for row in rows if row["lr-AdamW/default"])["lr-AdamW/default"]) == pytest.approx(
        cfg.model.optim.lr
    )
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["run"]["effective_batch_size"] == 4  # 4 images x 1 device x 1 accumulation
    assert hparams["run"]["world_size"] == 1
    assert hparams["run"]["lr/default"] == pytest.approx(cfg.model.optim.lr)
    assert hparams["model"]["optim"]["lr"] == pytest.approx(cfg.model.optim.lr)  # the resolved config
    assert hparams["model_size"]["params_total"] >= hparams["model_size"]["params_trainable"] > 0
    assert "git_commit" in hparams["run"]

    # TensorBoard: scalars and the per-class table.
    (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events = event_accumulator.EventAccumulator(str(event_file), size_guidance={"tensors": 0})
    events.Reload()
    assert {"val/AP", "train/loss_step", "lr-AdamW/default"} <= set(events.Tags()["scalars"])
    assert "val/AP_per_class/text_summary" in events.Tags()["tensors"]
    assert {"val/plots/pr_curve_iou50", "val/plots/confusion_matrix"} <= set(events.Tags()["images"])

    # W&B, offline: the run file's history holds val/AP, the config holds the run record.
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = wandb_history_and_config(run_file)
    val_ap = [row["val/AP"] for row in history if "val/AP" in row]
    assert val_ap and val_ap[-1] == pytest.approx(metrics["val/AP"])
    # the per-class table is a W&B media item: its history entry has nested keys (sha256, path, ...)
    assert any(key.startswith("val/AP_per_class_table/") for row in history for key in row)
    assert any(key.startswith("val/AP_per_class/") for row in history for key in row)
    assert any(key.startswith("val/plots/f1_confidence/") for row in history for key in row)
    assert config["run"]["effective_batch_size"] == 4
    assert config["model"]["optim"]["lr"] == pytest.approx(cfg.model.optim.lr)

    # The checkpoint remembers the W&B run, so a resumed run continues it.
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["detrlab_tracking"]["wandb"] == run_file.stem.removeprefix("run-")
