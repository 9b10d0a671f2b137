"""Exponential moving average (EMA) of the weights, on Lightning's weight-averaging callback.

Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` keeps a
:class:`torch.optim.swa_utils.AveragedModel` next to the trained module, updates it after every
optimizer step, swaps it in for each validation epoch (so validation, the monitored ``val/AP`` and
the best-checkpoint choice see the averaged weights, in one pass), writes it as the checkpoint's
``state_dict`` (the raw weights go to ``current_model_state``, the update count to
``averaging_state``) and restores both on resume. This module adds what detection recipes use on
top: a decay that ramps up over the first updates, and correct checkpoints when a save lands in
the middle of a validation epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from detrlab.errors import ConfigError

#: Where a checkpoint written with an EMA keeps the raw (not averaged) weights; its ``state_dict``
#: then holds the averaged ones (the layout of Lightning's ``WeightAveraging``).
RAW_WEIGHTS_KEY = "current_model_state"


def warmup_decay(decay: float, warmup_steps: int, update_index: int) -> float:
    """The EMA decay used for the ``update_index``-th update (1-based), ramped up over ``warmup_steps``.

    ``decay * (1 - exp(-update_index / warmup_steps))``, as in the EMA of RT-DETR and YOLO
    trainers: the first updates follow the fast-moving early weights almost fully, instead of
    being anchored for thousands of steps to the random initialisation. ``warmup_steps=0`` gives
    the constant ``decay``.
    """
    if warmup_steps <= 0:
        return decay
    return decay * (1.0 - math.exp(-update_index / warmup_steps))


def warmup_ema_update(decay: float, warmup_steps: int) -> Callable[[list, list, torch.Tensor], None]:
    """A ``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`: EMA with decay warmup.

    The returned function gets lists of same-dtype tensors (averaged, current) and ``num_averaged``,
    the number of updates done so far (``AveragedModel`` copies the weights on the first update
    and calls this from the second one on, so update ``num_averaged + 1`` is being applied).
    Floating tensors move towards the current values by ``1 - decay``; integer buffers (e.g.
    BatchNorm's ``num_batches_tracked``) are copied, since an average of counters means nothing.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not (torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0])):
            torch._foreach_copy_(averaged, current)
            return
        step_decay = warmup_decay(decay, warmup_steps, int(num_averaged) + 1)
        torch._foreach_lerp_(averaged, current, 1.0 - step_decay)

    return update


class ExponentialMovingAverage(WeightAveraging):
    """Keep an EMA of the module's parameters and floating buffers; validate and checkpoint with it.

    Args:
        decay: the decay after warmup, in ``[0, 1)`` (RT-DETR: 0.9999; shorter runs want less,
            e.g. 0.999 for a few thousand steps).
        warmup_steps: optimizer steps over which the decay ramps up from 0 (see :func:`warmup_decay`);
            0 uses ``decay`` from the first update.
        device: where the averaged copy lives (``None``: the module's device; ``"cpu"`` saves
            accelerator memory at the cost of a copy per step).

    With gradient accumulation an update follows each optimizer step, not each batch. Checkpoints
    hold the averaged weights as ``state_dict``; :func:`detrlab.checkpoint.load_trained_weights`
    picks them (or the raw ones) for evaluation, prediction and export.
    """

    def __init__(self, decay: float = 0.9999, warmup_steps: int = 2000, device: str | None = None) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ConfigError(
                f"callbacks.ema.decay={decay} is outside [0, 1): use e.g. 0.9999 (long runs) or 0.999 (short ones)."
            )
        if int(warmup_steps) < 0:
            raise ConfigError(
                f"callbacks.ema.warmup_steps={warmup_steps} is negative: give a number of optimizer steps "
                "(0 disables the warmup)."
            )
        super().__init__(
            device=device, use_buffers=True, multi_avg_fn=warmup_ema_update(float(decay), int(warmup_steps))
        )
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        # True while the module holds the averaged weights (between validation epoch start and end).
        self._module_holds_average = False

    def _swap_models(self, pl_module: L.LightningModule) -> None:
        super()._swap_models(pl_module)
        self._module_holds_average = not self._module_holds_average

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None and self._module_holds_average:
            # A save during validation (SIGTERM, Ctrl-C): the module holds the average and the
            # AveragedModel the raw weights, so the parent stored them under each other's key.
            checkpoint["state_dict"], checkpoint[RAW_WEIGHTS_KEY] = (
                checkpoint[RAW_WEIGHTS_KEY],
                checkpoint["state_dict"],
            )


class RawWeightsOnResume(Callback):
    """Resuming a checkpoint written with an EMA in a run without one: continue the raw weights.

    Lightning restores the module from ``state_dict``, which in such a checkpoint is the average;
    training would silently continue from the EMA instead of the trained weights. This callback
    (added by the training run whenever no EMA callback is configured) reloads the raw weights.
    """

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if RAW_WEIGHTS_KEY not in checkpoint:
            return
        pl_module.load_state_dict(checkpoint[RAW_WEIGHTS_KEY])
        rank_zero_warn(
            "The checkpoint was trained with ema=on but this run has no EMA: training continues from its raw "
            "weights and the average is dropped. Add ema=on (with the same callbacks.ema settings) to keep it."
        )


def add_resume_guard(callbacks: list[Callback]) -> list[Callback]:
    """``callbacks`` plus :class:`RawWeightsOnResume` unless a weight-averaging callback is among them."""
    if any(isinstance(callback, WeightAveraging) for callback in callbacks):
        return callbacks
    return [*callbacks, RawWeightsOnResume()]
