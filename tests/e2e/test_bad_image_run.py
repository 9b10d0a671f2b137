"""A corrupt training image met in the middle of an epoch: the run stops naming it, or replaces and counts it."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import lightning as L
import pytest
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.loggers import CSVLogger

from detrlab.builders import build_datamodule, build_model
from detrlab.errors import CorruptImageError
from tests.helpers import TINY_OVERRIDES, compose_config


class CorruptTheUnseenImages(L.Callback):
    """After the first training batch, truncate every training image file not yet loaded.

    Start-up checks have passed by then (they only stat the files), so the damage is met mid-epoch.
    """

    def __init__(self) -> None:
        self.corrupted: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx != 0 or self.corrupted:
            return
        dataset = trainer.datamodule.train_dataset
        seen = {int(t["image_id"]) for t in batch.targets}
        for image_id in dataset.ids:
            if image_id not in seen:
                path = Path(dataset.image_dir) / dataset.coco.imgs[image_id]["file_name"]
                path.write_bytes(path.read_bytes()[:120])  # a truncated JPEG
                self.corrupted.add(path.name)


def _fit(tmp_path: Path, policy: str):
    # A private copy of the data: the images get damaged.
    cfg = compose_config(
        "train",
        [*TINY_OVERRIDES, f"paths.data_dir={tmp_path / 'data'}", f"data.on_bad_image={policy}"],
        tmp_path,
    )
    GlobalHydra.instance().clear()
    datamodule, model = build_datamodule(cfg.data), build_model(cfg.model)
    corrupter = CorruptTheUnseenImages()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[corrupter],
        logger=CSVLogger(tmp_path, name="csv", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    return trainer, corrupter, lambda: trainer.fit(model, datamodule=datamodule)


def test_on_bad_image_error_stops_the_run_naming_the_file(tmp_path):
    trainer, corrupter, fit = _fit(tmp_path, "error")
    with pytest.raises(CorruptImageError) as raised:
        fit()
    assert trainer.global_step >= 1  # it happened in the middle of the epoch, after training steps
    assert Path(str(raised.value.path)).name in corrupter.corrupted
    assert Path(str(raised.value.path)).name in str(raised.value)
    assert "data.on_bad_image=skip" in str(raised.value)


def test_on_bad_image_skip_replaces_and_counts_in_logs_and_metrics(tmp_path, caplog):
    trainer, corrupter, fit = _fit(tmp_path, "skip")
    with caplog.at_level(logging.WARNING, logger="detrlab"):
        fit()
    assert trainer.global_step == 4  # the epoch completed: 16 images in batches of 4
    # The 12 images not in batch 0 were damaged after it and each is drawn once in the rest of the
    # epoch (with workers=0 the next batch is loaded after batch 0's end hooks): all 12 replaced.
    expected = 12
    assert len(corrupter.corrupted) == expected
    assert trainer.datamodule.replaced_images == expected
    assert f"{expected} in this run so far" in caplog.text
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        counts = [
            float(row["data/replaced_images"])
            for row in csv.DictReader(handle)
            if row.get("data/replaced_images")
        ]
    assert counts and counts[-1] == expected
