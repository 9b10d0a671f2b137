"""Model size figures for logs."""

from __future__ import annotations

from torch import nn


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """Unique parameters of ``module``: ``total``, ``trainable`` and ``frozen`` counts."""
    unique = {id(p): p for p in module.parameters()}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def count_parameters(module: nn.Module) -> str:
    """Human-readable parameter summary, e.g. ``'41.52M parameters (41.30M trainable)'``."""
    counts = parameter_counts(module)
    return f"{counts['total'] / 1e6:.2f}M parameters ({counts['trainable'] / 1e6:.2f}M trainable)"
