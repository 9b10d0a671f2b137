"""Finding non-finite (NaN / inf) loss terms and gradients, by name."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def nonfinite_terms(losses: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the non-finite entries of a criterion's output, or ``[]`` when ``loss`` is finite.

    Only a non-finite ``loss`` (the optimized sum) makes the step bad; the named culprits are the
    individual terms that are non-finite, or ``["loss"]`` itself when every term is finite and only
    the weighted sum overflowed. Costs one device synchronisation.
    """
    total = losses["loss"]
    if bool(torch.isfinite(total.detach()).all()):
        return []
    bad = [
        name
        for name, value in losses.items()
        if name != "loss" and not bool(torch.isfinite(torch.as_tensor(value).detach()).all())
    ]
    return bad or ["loss"]


def nonfinite_gradients(module: nn.Module) -> list[str]:
    """Names of the parameters whose gradient has a NaN or inf entry (``[]`` when all are finite).

    The common case (all finite) costs one fused reduction and one device synchronisation.
    """
    named = [(name, p.grad.detach()) for name, p in module.named_parameters() if p.grad is not None]
    if not named:
        return []
    total = torch.nn.utils.get_total_norm([grad for _, grad in named], error_if_nonfinite=False)
    if bool(torch.isfinite(total)):
        return []
    return [name for name, grad in named if not bool(torch.isfinite(grad).all())]
