"""GPU-run settings that can be checked on the CPU: TF32 opt-in, pinned batches, non-blocking copies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from detrlab.data.collate import Batch
from detrlab.data.datamodule import CocoDataModule
from detrlab.errors import ConfigError
from detrlab.utils.tf32 import apply_tf32


@pytest.fixture
def restore_precision():
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]


def test_tf32_opt_in_and_default_exact(restore_precision):
    apply_tf32(True)
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    for off in (False, None):
        apply_tf32(off)
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_tf32_rejects_non_boolean(restore_precision):
    with pytest.raises(ConfigError, match="tf32='yes' is not a boolean"):
        apply_tf32("yes")


def test_train_config_has_tf32_off_by_default():
    from omegaconf import OmegaConf

    from tests.helpers import CONFIG_DIR

    for name in ("train", "eval", "predict"):
        assert OmegaConf.load(CONFIG_DIR / f"{name}.yaml").tf32 is False


def _datamodule(pin_memory):
    return CocoDataModule(
        train_images="x", train_annotations="x", val_images="x", val_annotations="x", pin_memory=pin_memory
    )


@pytest.mark.parametrize(("device", "expected"), [("cuda", True), ("cpu", False), (None, False)])
def test_pin_memory_follows_the_trainer_device(device, expected):
    dm = _datamodule(None)
    if device is not None:
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    assert dm.pins_memory() is expected
    assert dm._loader_kwargs()["pin_memory"] is expected


def test_explicit_pin_memory_wins():
    dm = _datamodule(False)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda")))
    assert dm.pins_memory() is False
    assert _datamodule(True).pins_memory() is True


def test_batch_copies_are_non_blocking_to_accelerators(monkeypatch):
    calls = []

    def fake_to(self, device, non_blocking=False):
        calls.append((torch.device(device).type, non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    batch = Batch(
        torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool), [{"labels": torch.zeros(1)}]
    )
    batch.to("cuda")
    assert calls and all(call == ("cuda", True) for call in calls)
    calls.clear()
    batch.to("cpu")
    assert all(call == ("cpu", False) for call in calls)
    calls.clear()
    batch.to("cuda", non_blocking=False)
    assert all(call == ("cuda", False) for call in calls)
