"""Optimizer and learning-rate schedule for DETR-family detectors.

The DETR family trains with AdamW and three learning rates: the backbone (``backbone.*``) gets a
smaller one, the deformable-attention sampling layers (``sampling_offsets``, ``reference_points``)
a scaled one, everything else the base rate. The learning-rate schedule (``model.optim.schedule``)
is built by :mod:`detrlab.schedule`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from detrlab.errors import ConfigError
from detrlab.schedule import ScheduleSettings

log = logging.getLogger(__name__)

#: Keys of checkpoints written before the schedule became ``model.optim.schedule``; they only
#: mattered for training, so reading such a checkpoint (eval, predict, init_from) ignores them.
_LEGACY_SCHEDULE_KEYS = ("lr_drop_epochs", "lr_gamma")


@dataclass
class OptimSettings:
    """Optimizer hyper-parameters, as written under ``model.optim`` in the configs.

    Attributes:
        lr: base learning rate (transformer, heads, projections).
        lr_backbone: learning rate of parameters whose name starts with ``backbone.``;
            ``0`` freezes the whole backbone.
        lr_linear_proj_mult: multiplier on ``lr`` for parameters whose name contains one of
            ``linear_proj_names`` (the deformable sampling offsets and reference points).
        linear_proj_names: name fragments that select the scaled group.
        weight_decay: AdamW decoupled weight decay, applied to every group.
        betas: AdamW betas.
        schedule: the learning-rate schedule (:class:`detrlab.schedule.ScheduleSettings`).
    """

    lr: float = 1e-4
    lr_backbone: float = 1e-5
    lr_linear_proj_mult: float = 0.1
    linear_proj_names: Sequence[str] = ("sampling_offsets", "reference_points")
    weight_decay: float = 1e-4
    betas: Sequence[float] = (0.9, 0.999)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)

    @classmethod
    def from_dict(cls, values: dict | None) -> OptimSettings:
        """Build from a plain dict, naming any key that is not a known setting."""
        values = dict(values or {})
        legacy = [key for key in _LEGACY_SCHEDULE_KEYS if key in values]
        if legacy:
            log.warning(
                "model.optim.%s (an older checkpoint's schedule) is ignored: the schedule is now "
                "model.optim.schedule.lr_drops, fractions of trainer.max_epochs.",
                "/".join(legacy),
            )
            for key in legacy:
                values.pop(key)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown key(s) under model.optim: {unknown}. Known keys: {sorted(known)}.")
        values["schedule"] = ScheduleSettings.from_dict(values.get("schedule"))
        return cls(**values)


def build_param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], settings: OptimSettings):
    """Split trainable parameters into the backbone / sampling-layer / default groups.

    Every trainable parameter lands in exactly one group; frozen ones (``requires_grad=False``)
    are left out so AdamW keeps no state for them. Empty groups are dropped.

    Returns:
        list of param-group dicts with keys ``params``, ``lr`` and ``name``.
    """
    groups = {
        "default": {"name": "default", "lr": settings.lr, "params": []},
        "backbone": {"name": "backbone", "lr": settings.lr_backbone, "params": []},
        "linear_proj": {
            "name": "linear_proj",
            "lr": settings.lr * settings.lr_linear_proj_mult,
            "params": [],
        },
    }
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if name.startswith("backbone.") or ".backbone." in f".{name}":
            key = "backbone"
        elif any(fragment in name for fragment in settings.linear_proj_names):
            key = "linear_proj"
        else:
            key = "default"
        groups[key]["params"].append(param)
    return [group for group in groups.values() if group["params"] and group["lr"] > 0]


def build_optimizer(module: nn.Module, settings: OptimSettings) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups` of ``module``'s parameters."""
    param_groups = build_param_groups(module.named_parameters(), settings)
    if not param_groups:
        raise ConfigError(
            "The detector has no trainable parameters: every learning rate under model.optim is 0 or "
            "every parameter is frozen; give model.optim.lr (and lr_backbone) a positive value."
        )
    return torch.optim.AdamW(
        param_groups, lr=settings.lr, weight_decay=settings.weight_decay, betas=tuple(settings.betas)
    )
