"""EMA of the weights (``ema=on``): validation, checkpoints, eval and resume use the average."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from detrlab import eval as eval_run
from detrlab import train
from detrlab.callbacks.config_in_checkpoint import CHECKPOINT_CONFIG_KEY
from detrlab.checkpoint import load_checkpoint, model_from_checkpoint
from tests.helpers import TINY_OVERRIDES, compose_config

DECAY = 0.9
WARMUP_STEPS = 3
EMA_OVERRIDES = ["ema=on", f"callbacks.ema.decay={DECAY}", f"callbacks.ema.warmup_steps={WARMUP_STEPS}"]
STEPS_PER_EPOCH = 4  # 16 training images, batch 4


def _float_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().double() for k, v in module.state_dict().items() if v.is_floating_point()}


class RecordWeights(L.Callback):
    """The raw weights after every optimizer step, the weights validation runs with, and a checkpoint
    saved in the middle of the last validation epoch (as SIGTERM or Ctrl-C would)."""

    #: The instance built for each run, by its ``mid_validation_path`` (Hydra builds the callback).
    instances: dict[str, RecordWeights] = {}

    def __init__(self, mid_validation_path: str) -> None:
        RecordWeights.instances[mid_validation_path] = self
        self.after_step: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []
        self.mid_validation_path = mid_validation_path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step.append(_float_weights(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self.validated.append(_float_weights(pl_module))
            if trainer.current_epoch == trainer.max_epochs - 1:
                trainer.save_checkpoint(self.mid_validation_path)


def independent_ema(raw_weights: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The EMA over the raw weights of each step, from the formula (first update copies)."""
    average = dict(raw_weights[0])
    for index, weights in enumerate(raw_weights[1:], start=2):
        decay = DECAY * (1.0 - math.exp(-index / WARMUP_STEPS))
        average = {k: decay * average[k] + (1.0 - decay) * weights[k] for k in average}
    return average


def assert_weights_equal(actual: dict, expected: dict[str, torch.Tensor]) -> None:
    assert set(expected) <= set(actual)
    for name, weight in expected.items():
        torch.testing.assert_close(actual[name].double(), weight, rtol=1e-5, atol=1e-6, msg=name)


def assert_weights_differ(actual: dict, other: dict[str, torch.Tensor]) -> None:
    largest = max((actual[k].double() - other[k]).abs().max().item() for k in other)
    assert largest > 1e-3, f"the weights differ by at most {largest}"


def _cfg(output_dir: Path, data_dir: Path, *extra: str):
    return compose_config(
        "train",
        [*TINY_OVERRIDES, f"paths.data_dir={data_dir}", "trainer.deterministic=true", *EMA_OVERRIDES, *extra],
        output_dir=output_dir,
    )


def _last(output_dir: Path) -> dict:
    return torch.load(output_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, synthetic_data_dir):
    """Two epochs with EMA on, recording the raw weights of every step."""
    output_dir = tmp_path_factory.mktemp("ema_run")
    cfg = _cfg(output_dir, synthetic_data_dir, "trainer.max_epochs=2")
    mid_validation_path = str(output_dir / "mid_validation.ckpt")
    with open_dict(cfg):
        cfg.callbacks.record = {
            "_target_": f"{__name__}.RecordWeights",
            "mid_validation_path": mid_validation_path,
        }
    metrics = train.run(cfg)
    recorder = RecordWeights.instances.pop(mid_validation_path)
    return output_dir, recorder, metrics


def test_validation_and_checkpoints_use_the_averaged_weights(ema_run, synthetic_data_dir):
    output_dir, recorder, metrics = ema_run
    steps = recorder.after_step
    assert len(steps) == 2 * STEPS_PER_EPOCH
    # One validation pass per epoch, run with the EMA of the steps so far, not with the raw weights.
    assert len(recorder.validated) == 2
    for epoch, validated in enumerate(recorder.validated):
        done = steps[: (epoch + 1) * STEPS_PER_EPOCH]
        assert_weights_equal(validated, independent_ema(done))
        assert_weights_differ(validated, done[-1])

    expected_average, raw = independent_ema(steps), steps[-1]
    checkpoint = _last(output_dir)
    assert_weights_equal(checkpoint["state_dict"], expected_average)
    assert_weights_differ(checkpoint["state_dict"], raw)
    assert_weights_equal(checkpoint["current_model_state"], raw)
    assert int(checkpoint["averaging_state"]["n_averaged"]) == len(steps)
    # The best-AP checkpoint holds the average too.
    best = next(p for p in (output_dir / "checkpoints").glob("epoch_*.ckpt"))
    best_epoch = int(best.stem.split("_")[1])
    best_state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert_weights_equal(best_state, independent_ema(steps[: (best_epoch + 1) * STEPS_PER_EPOCH]))

    # A save during validation (the module then holds the average) stores the same two sets.
    mid = torch.load(output_dir / "mid_validation.ckpt", map_location="cpu", weights_only=True)
    assert_weights_equal(mid["state_dict"], expected_average)
    assert_weights_equal(mid["current_model_state"], raw)

    # eval.py loads the average: its AP is the one the last validation of training logged.
    eval_cfg = compose_config(
        "eval",
        [
            f"ckpt_path={output_dir / 'checkpoints' / 'last.ckpt'}",
            "trainer.accelerator=cpu",
            "results_file=null",
        ],
        output_dir=output_dir / "eval",
    )
    evaluated = eval_run.run(eval_cfg)
    assert evaluated["val/AP"] == pytest.approx(metrics["val/AP"], abs=1e-6)
    assert evaluated["val/AP50"] == pytest.approx(metrics["val/AP50"], abs=1e-6)


def test_loading_a_checkpoint_prefers_the_average_and_can_take_the_raw_weights(ema_run, caplog):
    output_dir, recorder, _ = ema_run
    checkpoint = load_checkpoint(output_dir / "checkpoints" / "last.ckpt")
    cfg_model = OmegaConf.create(checkpoint[CHECKPOINT_CONFIG_KEY]["model"])
    with caplog.at_level("INFO"):
        averaged = model_from_checkpoint(cfg_model, checkpoint)
    assert "exponential moving average" in caplog.text
    assert_weights_equal(_float_weights(averaged), independent_ema(recorder.after_step))
    raw = model_from_checkpoint(cfg_model, checkpoint, use_averaged=False)
    assert_weights_equal(_float_weights(raw), recorder.after_step[-1])


def test_resume_with_ema_gives_the_uninterrupted_weights(ema_run, tmp_path, synthetic_data_dir):
    straight_dir, _, _ = ema_run
    resumed = tmp_path / "resumed"
    train.run(_cfg(resumed, synthetic_data_dir, "trainer.max_epochs=1"))
    train.run(_cfg(resumed, synthetic_data_dir, "trainer.max_epochs=2", "ckpt_path=last"))

    expected, actual = _last(straight_dir), _last(resumed)
    assert actual["global_step"] == expected["global_step"] == 2 * STEPS_PER_EPOCH
    for key in ("state_dict", "current_model_state"):
        assert expected[key].keys() == actual[key].keys()
        for name, weight in expected[key].items():
            torch.testing.assert_close(actual[key][name], weight, rtol=0, atol=1e-6, msg=f"{key}.{name}")
    assert int(actual["averaging_state"]["n_averaged"]) == int(expected["averaging_state"]["n_averaged"])


class WeightsAtTrainStart(L.Callback):
    """The weights training continues from, after the checkpoint was restored."""

    seen: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        WeightsAtTrainStart.seen.append(_float_weights(pl_module))


def test_resuming_an_ema_checkpoint_without_ema_continues_the_raw_weights(
    ema_run, tmp_path, synthetic_data_dir
):
    output_dir, recorder, _ = ema_run
    cfg = compose_config(
        "train",
        [
            *TINY_OVERRIDES,
            f"paths.data_dir={synthetic_data_dir}",
            "trainer.max_epochs=3",
            f"ckpt_path={output_dir / 'checkpoints' / 'last.ckpt'}",
        ],
        output_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.callbacks.start = {"_target_": f"{__name__}.WeightsAtTrainStart"}
    WeightsAtTrainStart.seen.clear()
    with pytest.warns(UserWarning, match="continues from its raw weights"):
        train.run(cfg)
    (start,) = WeightsAtTrainStart.seen
    assert_weights_equal(start, recorder.after_step[-1])
    assert_weights_differ(start, independent_ema(recorder.after_step))
