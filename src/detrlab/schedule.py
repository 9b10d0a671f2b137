"""Learning-rate schedules of DETR-family recipes, built from torch's own LR schedulers.

Three shapes cover the field's recipes:

- ``step`` (the papers'): the rate is multiplied by ``gamma`` at each drop (``MultiStepLR``);
- ``step`` with ``warmup_iters > 0``: a linear warmup (``LinearLR``) first, then the drops
  (``SequentialLR``), as RT-DETR-style recipes train;
- ``cosine``: an optional linear warmup, then ``CosineAnnealingLR`` down to 0 at the end of the run.

Drops are **fractions of the run** (``"10/12"`` or ``0.8``), turned into epochs (or iterations)
once the trainer knows its length: a schedule therefore always fits its epoch count, whatever
``trainer.max_epochs`` a command sets. Warmup is counted in iterations (optimizer steps), so it
needs a schedule that advances per iteration (``interval: step``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR

from detrlab.errors import ConfigError

__all__ = ["ScheduleSettings", "build_lr_scheduler", "drop_fractions", "milestones_for_length"]

_NAMES = ("step", "cosine")
_INTERVALS = ("epoch", "step")


@dataclass
class ScheduleSettings:
    """The LR schedule, as written under ``model.optim.schedule`` in the configs.

    Attributes:
        name: ``step`` (drops by ``gamma`` at ``lr_drops``) or ``cosine`` (half-cosine to 0).
        interval: ``epoch`` (the scheduler advances once per epoch, as the papers' scripts do) or
            ``step`` (once per optimizer step; needed for warmup).
        lr_drops: where the ``step`` schedule drops, as fractions of the run's length in ``(0, 1)``:
            numbers (``0.8``) or exact ratios (``"10/12"``). A drop lands on epoch
            ``round(fraction x max_epochs)`` (for ``interval: step`` on the first iteration of that
            epoch), so ``"10/12"`` is "after epoch 10" for 12 epochs and "after epoch 20" for 24.
        gamma: the factor applied at each drop.
        warmup_iters: optimizer steps of linear warmup from ``warmup_start_factor x lr`` to ``lr``.
        warmup_start_factor: the warmup's first rate, relative to each group's rate (> 0).
    """

    name: str = "step"
    interval: str = "epoch"
    lr_drops: Sequence[float | str] = field(default_factory=lambda: ["4/5"])
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_start_factor: float = 0.001

    @classmethod
    def from_dict(cls, values: dict | None) -> ScheduleSettings:
        """Build from a plain dict and check every value, naming the bad key and the fix."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"Unknown key(s) under model.optim.schedule: {unknown}. Known keys: {sorted(known)}."
            )
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise :class:`ConfigError` for a value no schedule can use."""
        if self.name not in _NAMES:
            raise ConfigError(f"model.optim.schedule.name={self.name!r} is not one of {list(_NAMES)}.")
        if self.interval not in _INTERVALS:
            raise ConfigError(
                f"model.optim.schedule.interval={self.interval!r} is not one of {list(_INTERVALS)}."
            )
        if int(self.warmup_iters) < 0:
            raise ConfigError(f"model.optim.schedule.warmup_iters={self.warmup_iters} must be >= 0.")
        if self.warmup_iters and self.interval != "step":
            raise ConfigError(
                f"model.optim.schedule.warmup_iters={self.warmup_iters} counts optimizer steps, but the "
                "schedule advances per epoch: add model.optim.schedule.interval=step."
            )
        if not 0.0 < float(self.warmup_start_factor) <= 1.0:
            raise ConfigError(
                f"model.optim.schedule.warmup_start_factor={self.warmup_start_factor} must be in (0, 1]."
            )
        if not float(self.gamma) > 0.0:
            raise ConfigError(f"model.optim.schedule.gamma={self.gamma} must be > 0.")
        drop_fractions(self.lr_drops)


def drop_fractions(lr_drops: Sequence[float | str] | None) -> list[Fraction]:
    """``lr_drops`` as exact fractions in ``(0, 1)``, sorted.

    Raises:
        ConfigError: for an entry that is not a number or ``"a/b"``, or is outside ``(0, 1)``.
    """
    fractions = []
    for entry in lr_drops or []:
        try:
            value = Fraction(str(entry).strip())
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"model.optim.schedule.lr_drops entry {entry!r} is not a fraction: write 0.8 or 10/12."
            ) from None
        if not 0 < value < 1:
            raise ConfigError(
                f"model.optim.schedule.lr_drops entry {entry!r} is not a fraction of the run in (0, 1): "
                "drops are given relative to trainer.max_epochs, e.g. 10/12 for after epoch 10 of 12."
            )
        fractions.append(value)
    return sorted(fractions)


def milestones_for_length(lr_drops: Sequence[float | str], length: int) -> list[int]:
    """The drop positions (epochs or iterations, rounding halves up) for a run of ``length`` of them."""
    return [math.floor(fraction * length + Fraction(1, 2)) for fraction in drop_fractions(lr_drops)]


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    settings: ScheduleSettings,
    max_epochs: int | None,
    total_steps: int | None,
) -> dict[str, Any]:
    """The Lightning ``lr_scheduler`` dict of ``settings`` for a run of the given length.

    Args:
        optimizer: the optimizer whose groups' ``lr`` are the peak rates.
        settings: the schedule.
        max_epochs: ``trainer.max_epochs`` (``None`` or ``-1`` when the run is bounded by steps).
        total_steps: the run's optimizer steps (``trainer.estimated_stepping_batches``); needed
            for ``interval: step``.

    Returns:
        ``{"scheduler": LRScheduler, "interval": "epoch" | "step", "frequency": 1}``.
    """
    epochs = int(max_epochs) if max_epochs is not None and int(max_epochs) > 0 else None
    if settings.interval == "epoch":
        if epochs is None:
            raise ConfigError(
                "model.optim.schedule.interval=epoch needs trainer.max_epochs; a run bounded by "
                "trainer.max_steps needs model.optim.schedule.interval=step."
            )
        length = epochs
        milestones = milestones_for_length(settings.lr_drops, epochs)
    else:
        if total_steps is None or not math.isfinite(total_steps) or int(total_steps) < 1:
            raise ConfigError(
                "model.optim.schedule.interval=step needs a finite run length: set trainer.max_epochs "
                "or trainer.max_steps."
            )
        length = int(total_steps)
        if epochs is not None:
            # Drops on epoch boundaries, as in the papers, also when counting iterations.
            steps_per_epoch = length / epochs
            milestones = [
                math.floor(e * steps_per_epoch) for e in milestones_for_length(settings.lr_drops, epochs)
            ]
        else:
            milestones = milestones_for_length(settings.lr_drops, length)
    warmup = int(settings.warmup_iters)
    if warmup >= length:
        raise ConfigError(
            f"model.optim.schedule.warmup_iters={warmup} is not shorter than the run ({length} optimizer "
            "steps): shorten the warmup or train longer."
        )
    main = _main_scheduler(optimizer, settings, milestones, length, warmup)
    if warmup:
        early = [m for m in milestones if m < warmup] if settings.name == "step" else []
        if early:
            raise ConfigError(
                f"model.optim.schedule.lr_drops fall at iterations {early}, inside the "
                f"{warmup}-iteration warmup: drop later or warm up for fewer iterations."
            )
        ramp = LinearLR(
            optimizer, start_factor=float(settings.warmup_start_factor), end_factor=1.0, total_iters=warmup
        )
        scheduler: LRScheduler = SequentialLR(optimizer, schedulers=[ramp, main], milestones=[warmup])
    else:
        scheduler = main
    return {"scheduler": scheduler, "interval": settings.interval, "frequency": 1}


def _main_scheduler(
    optimizer: torch.optim.Optimizer,
    settings: ScheduleSettings,
    milestones: list[int],
    length: int,
    warmup: int,
) -> LRScheduler:
    # After SequentialLR hands over at `warmup`, the second scheduler counts from 0 again.
    if settings.name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=length - warmup, eta_min=0.0)
    return MultiStepLR(optimizer, milestones=[m - warmup for m in milestones], gamma=float(settings.gamma))
