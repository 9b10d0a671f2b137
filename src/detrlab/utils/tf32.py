"""The ``tf32`` setting: TensorFloat-32 matrix products and convolutions on NVIDIA GPUs, opt-in.

On Ampere and later GPUs TF32 runs float32 matmuls and convolutions on the tensor cores with a
10-bit mantissa (about 3e-4 relative error per product instead of float32's 1e-7), several times
faster. Training DETR-family models is usually insensitive to that, but results then differ from
exact float32 runs, and parity checks against reference implementations need exact float32; so
the default is off and a run opts in with ``tf32=true``. The setting has no effect on CPUs.
"""

from __future__ import annotations

import torch

from detrlab.errors import ConfigError

__all__ = ["apply_tf32"]


def apply_tf32(enabled: object) -> None:
    """Turn TF32 matmuls (``torch.set_float32_matmul_precision``) and cuDNN convolutions on or off.

    Args:
        enabled: the config's ``tf32`` value: ``True`` for TF32 (matmul precision ``"high"``),
            ``False`` or ``None`` for exact float32 (``"highest"``, cuDNN TF32 off).

    Raises:
        ConfigError: ``enabled`` is not a boolean.
    """
    if enabled is None:
        enabled = False
    if not isinstance(enabled, bool):
        raise ConfigError(
            f"tf32={enabled!r} is not a boolean: set tf32=true for TensorFloat-32 matmuls and "
            "convolutions on GPUs, or tf32=false (default) for exact float32"
        )
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
