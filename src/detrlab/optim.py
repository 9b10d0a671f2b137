"""Optimizer and learning-rate schedule for DETR-family detectors.

The DETR family trains with AdamW and three learning rates: the backbone (``backbone.*``) gets a
smaller one, the deformable-attention sampling layers (``sampling_offsets``, ``reference_points``)
a scaled one, everything else the base rate. The schedule is a step decay counted in epochs, so it
does not change with the number of devices or the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import nn


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
        lr_drop_epochs: epochs after which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: the decay factor.
    """

    lr: float = 1e-4
    lr_backbone: float = 1e-5
    lr_linear_proj_mult: float = 0.1
    linear_proj_names: Sequence[str] = ("sampling_offsets", "reference_points")
    weight_decay: float = 1e-4
    betas: Sequence[float] = (0.9, 0.999)
    lr_drop_epochs: Sequence[int] = field(default_factory=lambda: [200])
    lr_gamma: float = 0.1

    @classmethod
    def from_dict(cls, values: dict | None) -> OptimSettings:
        """Build from a plain dict, naming any key that is not a known setting."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown key(s) under model.optim: {unknown}. Known keys: {sorted(known)}.")
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
        raise ValueError(
            "The detector has no trainable parameters: check model.optim and the backbone's freezing."
        )
    return torch.optim.AdamW(
        param_groups, lr=settings.lr, weight_decay=settings.weight_decay, betas=tuple(settings.betas)
    )


def build_epoch_scheduler(optimizer: torch.optim.Optimizer, settings: OptimSettings):
    """Step decay at ``lr_drop_epochs`` (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=sorted(int(e) for e in settings.lr_drop_epochs), gamma=settings.lr_gamma
    )
