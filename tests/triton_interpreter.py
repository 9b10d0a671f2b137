"""Switch Triton's interpreter on for the test session where no GPU can run Triton kernels.

``triton.jit`` chooses between a compiled and an interpreted kernel when it decorates a function,
from ``TRITON_INTERPRET``, and Triton's own ``@jit`` library functions (``tl.sum``, ...) are
decorated when ``triton`` is first imported. So the variable must be set before anything imports
triton (torchvision and Lightning do): ``tests/conftest.py`` imports this module first.

Only where CUDA is unavailable (no Triton kernel could run there anyway, and ``auto`` dispatch
never picks Triton for CPU tensors, so no other test changes behaviour); on a GPU machine the
Triton tests run the compiled kernels on the GPU instead. A value already in the environment is
kept.
"""

from __future__ import annotations

import os
import sys

import torch

#: Why the interpreter could not be switched on (``None`` when it is on, or a GPU runs the kernels).
INTERPRETER_UNAVAILABLE: str | None = None

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    if "triton" in sys.modules:
        INTERPRETER_UNAVAILABLE = "triton was imported before tests/conftest.py could enable its interpreter"
    else:
        os.environ["TRITON_INTERPRET"] = "1"
