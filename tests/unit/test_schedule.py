"""LR schedules: the rate at chosen epochs / iterations equals the closed-form formula of each shape."""

from __future__ import annotations

import math

import pytest
import torch

from detrlab.errors import ConfigError
from detrlab.optim import OptimSettings, build_optimizer
from detrlab.schedule import ScheduleSettings, build_lr_scheduler, milestones_for_length

BASE_RATES = (2e-4, 2e-5)  # two param groups (default, backbone) keep their ratio under every schedule


def _optimizer() -> torch.optim.Optimizer:
    head, backbone = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    return torch.optim.AdamW(
        [
            {"params": head.parameters(), "lr": BASE_RATES[0]},
            {"params": backbone.parameters(), "lr": BASE_RATES[1]},
        ]
    )


def _rates(settings: ScheduleSettings, max_epochs: int | None, total_steps: int | None, count: int):
    """The rate of each group used at position 0..count-1 (epoch or iteration), as Lightning steps it."""
    optimizer = _optimizer()
    config = build_lr_scheduler(optimizer, settings, max_epochs=max_epochs, total_steps=total_steps)
    rates = []
    for _ in range(count):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        config["scheduler"].step()
    return config, rates


def _check(rates, expected_factor, positions):
    for t in positions:
        for group, base in enumerate(BASE_RATES):
            assert rates[t][group] == pytest.approx(base * expected_factor(t), rel=1e-9, abs=1e-15), (
                t,
                group,
            )


def test_step_schedule_per_epoch_drops_after_the_papers_epochs():
    settings = ScheduleSettings(name="step", interval="epoch", lr_drops=["10/12"], gamma=0.1)
    config, rates = _rates(settings, max_epochs=12, total_steps=None, count=12)
    assert config["interval"] == "epoch"
    _check(rates, lambda t: 0.1 ** (t >= 10), positions=[0, 5, 9, 10, 11])
    # the same fraction fits a 24-epoch run: drop after epoch 20
    _, rates = _rates(settings, max_epochs=24, total_steps=None, count=24)
    _check(rates, lambda t: 0.1 ** (t >= 20), positions=[0, 19, 20, 23])


def test_two_drops_multiply():
    settings = ScheduleSettings(lr_drops=[0.5, "3/4"], gamma=0.5)
    _, rates = _rates(settings, max_epochs=8, total_steps=None, count=8)
    _check(rates, lambda t: 0.5 ** ((t >= 4) + (t >= 6)), positions=[0, 3, 4, 5, 6, 7])


def test_linear_warmup_then_step_per_iteration():
    # 10 epochs of 20 iterations, warmup 50 iterations from 1e-3 x lr, drop at epoch 8 = iteration 160
    warmup, start = 50, 1e-3
    settings = ScheduleSettings(
        name="step",
        interval="step",
        lr_drops=["4/5"],
        gamma=0.1,
        warmup_iters=warmup,
        warmup_start_factor=start,
    )
    config, rates = _rates(settings, max_epochs=10, total_steps=200, count=200)
    assert config["interval"] == "step"

    def factor(t):
        if t < warmup:
            return start + (1 - start) * t / warmup
        return 0.1 ** (t >= 160)

    _check(rates, factor, positions=[0, 1, 25, 49, 50, 51, 120, 159, 160, 199])


def test_cosine_with_warmup_per_iteration():
    warmup, start, total = 30, 0.01, 300
    settings = ScheduleSettings(
        name="cosine", interval="step", warmup_iters=warmup, warmup_start_factor=start, lr_drops=[]
    )
    _, rates = _rates(settings, max_epochs=None, total_steps=total, count=total)

    def factor(t):
        if t < warmup:
            return start + (1 - start) * t / warmup
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))

    _check(rates, factor, positions=[0, 10, 29, 30, 31, 100, 165, 250, 299])


def test_cosine_per_epoch_without_warmup():
    settings = ScheduleSettings(name="cosine", interval="epoch")
    _, rates = _rates(settings, max_epochs=12, total_steps=None, count=12)
    _check(rates, lambda t: 0.5 * (1 + math.cos(math.pi * t / 12)), positions=[0, 3, 6, 11])


def test_drop_fractions_round_to_the_papers_epochs():
    assert milestones_for_length(["10/12"], 12) == [10]
    assert milestones_for_length(["10/12"], 24) == [20]
    assert milestones_for_length(["4/5"], 50) == [40]
    assert milestones_for_length([0.8], 500) == [400]
    assert milestones_for_length(["2/3"], 300) == [200]


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"name": "poly"}, "schedule.name"),
        ({"interval": "batch"}, "schedule.interval"),
        ({"lr_drops": [10]}, "fraction of the run"),
        ({"lr_drops": ["ten"]}, "not a fraction"),
        ({"warmup_iters": 100}, "interval=step"),
        ({"warmup_iters": 10, "interval": "step", "warmup_start_factor": 0.0}, "warmup_start_factor"),
        ({"lr_drop_epochs": [10]}, "Unknown key"),
    ],
)
def test_bad_schedule_values_are_config_errors_naming_the_key(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ScheduleSettings.from_dict(values)


def test_warmup_past_a_drop_or_the_run_is_a_config_error():
    settings = ScheduleSettings(interval="step", lr_drops=[0.1], warmup_iters=50)
    with pytest.raises(ConfigError, match="inside the 50-iteration warmup"):
        build_lr_scheduler(_optimizer(), settings, max_epochs=10, total_steps=200)
    with pytest.raises(ConfigError, match="not shorter than the run"):
        build_lr_scheduler(_optimizer(), ScheduleSettings(interval="step", warmup_iters=500), None, 200)


def test_optim_settings_read_the_schedule_node_and_reject_unknown_keys():
    settings = OptimSettings.from_dict({"lr": 1e-3, "schedule": {"name": "cosine"}})
    assert settings.schedule.name == "cosine"
    with pytest.raises(ConfigError, match=r"model\.optim"):
        OptimSettings.from_dict({"learning_rate": 1e-3})
    # a checkpoint written before the schedule node still loads (its schedule only mattered in training)
    assert OptimSettings.from_dict({"lr_drop_epochs": [40]}).schedule == ScheduleSettings()


def test_no_trainable_parameter_is_a_config_error():
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(frozen, OptimSettings())
