"""The EMA callback's decay warmup, its update function and its argument checks."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from detrlab.builders import build_callbacks
from detrlab.callbacks import ExponentialMovingAverage
from detrlab.callbacks.ema import warmup_decay, warmup_ema_update
from detrlab.errors import ConfigError
from tests.helpers import compose_config


def test_decay_ramps_up_to_the_configured_value():
    assert warmup_decay(0.9999, 2000, 1) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert warmup_decay(0.9999, 2000, 2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert warmup_decay(0.9999, 2000, 100_000) == pytest.approx(0.9999, abs=1e-12)
    assert warmup_decay(0.99, 0, 1) == 0.99


def test_averaged_model_follows_the_formula_and_copies_integer_buffers():
    model = torch.nn.BatchNorm1d(3)
    averaged = AveragedModel(model, multi_avg_fn=warmup_ema_update(0.5, 0), use_buffers=True)
    expected = None
    for step in range(1, 4):
        with torch.no_grad():
            model.weight.fill_(float(step))
            model.num_batches_tracked.fill_(10 * step)
        averaged.update_parameters(model)
        expected = 1.0 if expected is None else 0.5 * expected + 0.5 * step
        torch.testing.assert_close(averaged.module.weight, torch.full((3,), expected))
        assert int(averaged.module.num_batches_tracked) == 10 * step
    assert expected == pytest.approx(2.25)


@pytest.mark.parametrize("kwargs", [{"decay": 1.0}, {"decay": -0.1}, {"warmup_steps": -1}])
def test_bad_arguments_name_the_key(kwargs):
    with pytest.raises(ConfigError, match=r"callbacks\.ema"):
        ExponentialMovingAverage(**kwargs)


def test_ema_is_off_by_default_and_one_switch_turns_it_on(tmp_path):
    assert not any(isinstance(c, ExponentialMovingAverage) for c in _callbacks(tmp_path))
    (ema,) = [
        c
        for c in _callbacks(tmp_path, "ema=on", "callbacks.ema.decay=0.999")
        if isinstance(c, ExponentialMovingAverage)
    ]
    assert (ema.decay, ema.warmup_steps) == (0.999, 2000)


def _callbacks(tmp_path, *overrides: str) -> list:
    cfg = compose_config("train", list(overrides), tmp_path)
    return build_callbacks(cfg.callbacks, run_config=cfg)


class _TinyRegression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layer(inputs), targets)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_one_update_per_optimizer_step_with_gradient_accumulation(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(12, 2), torch.randn(12, 1))
    ema = ExponentialMovingAverage(decay=0.5, warmup_steps=0)
    trainer = L.Trainer(
        max_epochs=1,
        accumulate_grad_batches=2,
        callbacks=[ema],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_TinyRegression(), torch.utils.data.DataLoader(data, batch_size=2))
    assert trainer.global_step == 3  # 6 batches, 2 per optimizer step
    assert int(ema._average_model.n_averaged) == 3
