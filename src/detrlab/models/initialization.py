"""Weight initialisation shared by the DETR-family transformers."""

from __future__ import annotations

from torch import nn

__all__ = ["xavier_uniform_weight_matrices"]


def xavier_uniform_weight_matrices(module: nn.Module) -> None:
    """Xavier-uniform init of every parameter of ``module`` with two or more dims (the weight
    matrices), in registration order; biases and norm parameters keep their own init, as in the papers."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)
