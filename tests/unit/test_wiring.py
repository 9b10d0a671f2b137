"""The visible wiring: every callback comes from conf/callbacks, shared values are checked, Ctrl-C and
SIGTERM are one callback, DETA's defining options are not arguments."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from detrlab.builders import build_callbacks, build_model
from detrlab.callbacks import CheckpointOnStop, ConfigInCheckpoint, PerRankSeed, RunInfoLogger
from detrlab.errors import ConfigError
from detrlab.models.backbone import ResNetBackbone
from detrlab.models.deformable_detr import DETA
from detrlab.models.geometry import inverse_sigmoid, refine_boxes
from tests.helpers import TINY_OVERRIDES, compose_config


def test_every_callback_is_a_config_entry(tmp_path):
    cfg = compose_config("train", TINY_OVERRIDES, tmp_path)
    callbacks = build_callbacks(cfg.callbacks, run_config=cfg)
    entries = [node for node in cfg.callbacks.values() if node is not None and "_target_" in node]
    assert len(callbacks) == len(entries)
    kinds = {type(callback) for callback in callbacks}
    assert {ConfigInCheckpoint, RunInfoLogger, PerRankSeed, CheckpointOnStop} <= kinds
    assert next(c for c in callbacks if isinstance(c, PerRankSeed)).seed == cfg.seed


def test_run_record_callbacks_need_the_run_config(tmp_path):
    cfg = compose_config("train", TINY_OVERRIDES, tmp_path)
    with pytest.raises(ConfigError, match=r"callbacks.config_in_checkpoint .*run_config"):
        build_callbacks(cfg.callbacks)
    # a plain entry needs nothing else
    plain = OmegaConf.create({"stop": {"_target_": "detrlab.callbacks.checkpoint_on_stop.CheckpointOnStop"}})
    assert isinstance(build_callbacks(plain)[0], CheckpointOnStop)


@pytest.mark.parametrize(("key", "value"), [("num_classes", 5), ("num_queries", 7)])
def test_a_part_disagreeing_with_a_shared_value_is_named(tmp_path, key, value):
    cfg = compose_config("train", [*TINY_OVERRIDES, f"model.detector.{key}={value}"], tmp_path)
    with pytest.raises(ConfigError, match=rf"model.detector has {key}={value} but model.{key}="):
        build_model(cfg.model)


class _FakeTrainer(SimpleNamespace):
    def save_checkpoint(self, path):
        self.saved.append(str(path))


def _trainer(tmp_path, fn=TrainerFn.FITTING, sanity_checking=False):
    return _FakeTrainer(
        state=SimpleNamespace(fn=fn),
        sanity_checking=sanity_checking,
        checkpoint_callback=None,
        default_root_dir=str(tmp_path),
        is_global_zero=True,
        current_epoch=0,
        global_step=3,
        saved=[],
    )


@pytest.mark.parametrize("exception", [KeyboardInterrupt(), SIGTERMException()], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_save_last_checkpoint(tmp_path, exception):
    trainer = _trainer(tmp_path)
    CheckpointOnStop().on_exception(trainer, None, exception)
    assert trainer.saved == [str(tmp_path / "checkpoints" / "last.ckpt")]


@pytest.mark.parametrize(
    ("exception", "fn", "sanity"),
    [
        (RuntimeError("a crash"), TrainerFn.FITTING, False),
        (KeyboardInterrupt(), TrainerFn.VALIDATING, False),
        (SIGTERMException(), TrainerFn.FITTING, True),
    ],
    ids=["crash", "not-fitting", "sanity-check"],
)
def test_other_stops_write_nothing(tmp_path, exception, fn, sanity):
    trainer = _trainer(tmp_path, fn=fn, sanity_checking=sanity)
    CheckpointOnStop().on_exception(trainer, None, exception)
    assert trainer.saved == []


def test_deta_rejects_the_options_that_define_it():
    backbone = ResNetBackbone("resnet_small", return_stages=[2, 3, 4], stage_widths=[8, 16, 32, 32])
    with pytest.raises(ValueError, match=r"two_stage.*DeformableDETR"):
        DETA(backbone, num_classes=3, two_stage=False)


def test_refine_boxes_adds_in_inverse_sigmoid_space():
    delta = torch.tensor([[0.5, -0.5, 1.0, 2.0]])
    boxes = torch.tensor([[0.3, 0.6, 0.2, 0.1]])
    torch.testing.assert_close(
        refine_boxes(delta, boxes).sigmoid(), (inverse_sigmoid(boxes) + delta).sigmoid()
    )
    # a reference point keeps the head's own width and height
    refined = refine_boxes(delta, boxes[:, :2])
    torch.testing.assert_close(refined[:, :2], inverse_sigmoid(boxes[:, :2]) + delta[:, :2])
    torch.testing.assert_close(refined[:, 2:], delta[:, 2:])
