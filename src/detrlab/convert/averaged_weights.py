"""Pick the weights to import from a training-repository checkpoint: its EMA when it kept one.

Repositories derived from the DETR code bases save an exponential moving average of the weights
next to the raw ones, in one of two layouts:

- ``checkpoint["ema"] = {"module": state_dict, "updates": int}`` (RT-DETR's ``ModelEMA``);
- ``checkpoint["ema_model"] = state_dict`` of a wrapper module, keys prefixed ``module.``
  (DINO's ``ModelEma``).

The average is what those repositories evaluate and publish, so it is imported when present.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["select_model_state"]

_WRAPPER_PREFIX = "module."


def _unwrap(state: Mapping[str, Any]) -> dict[str, Tensor] | None:
    if isinstance(state.get("module"), Mapping):
        state = state["module"]
    tensors = {key: value for key, value in state.items() if isinstance(value, Tensor)}
    if not tensors:
        return None
    if all(key.startswith(_WRAPPER_PREFIX) for key in tensors):
        tensors = {key[len(_WRAPPER_PREFIX) :]: value for key, value in tensors.items()}
    return tensors


def select_model_state(
    checkpoint: Mapping[str, Any], use_averaged: bool = True
) -> tuple[dict[str, Tensor], str] | None:
    """The state dict to convert and a description of which one it is, or None when there is none.

    Args:
        checkpoint: the loaded ``.pth`` dict.
        use_averaged: prefer the EMA weights (``ema`` / ``ema_model``) over ``model`` when both exist.

    Returns:
        ``(state, "EMA weights ('ema')" | "weights ('model')")``.
    """
    if use_averaged:
        for key in ("ema", "ema_model"):
            if isinstance(checkpoint.get(key), Mapping):
                state = _unwrap(checkpoint[key])
                if state:
                    return state, f"EMA weights ('{key}')"
    if isinstance(checkpoint.get("model"), Mapping):
        return dict(checkpoint["model"]), "weights ('model')"
    return None
