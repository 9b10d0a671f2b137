"""A tiny DETA trained for two steps with the Triton kernels gives the C++ kernel's losses.

Runs through Triton's interpreter on CPU (see ``tests/triton_interpreter.py``), on CUDA where a GPU
runs the kernels (then against the PyTorch path, the C++ kernel being CPU-only).
"""

from __future__ import annotations

import pytest
import torch

from detrlab.builders import build_model
from detrlab.models import msda_kernel, msda_triton
from detrlab_ops import msda_triton as kernels
from tests.helpers import TINY_OVERRIDES, compose_config

DEVICE = torch.device("cpu" if kernels.INTERPRETED else "cuda")
pytestmark = pytest.mark.skipif(
    msda_triton.unavailable_reason(DEVICE) is not None,
    reason=f"no Triton kernels here: {msda_triton.unavailable_reason(DEVICE)}",
)
# the kernel Triton is compared with on this device
BASELINE = "compiled" if DEVICE.type == "cpu" and msda_kernel.load() else "pytorch"


def _batch(generator):
    images = torch.randn(2, 3, 64, 64, generator=generator)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[1, :, 48:] = True  # the second image is padded on the right
    targets = []
    for n in (3, 2):
        centres = torch.rand(n, 2, generator=generator) * 0.5 + 0.25
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
        targets.append(
            {
                "labels": torch.randint(0, 2, (n,), generator=generator),
                "boxes": torch.cat([centres, sizes], 1),
            }
        )
    return images, mask, targets


def _two_step_losses(cfg, implementation, state):
    cfg.model.detector.attention_implementation = implementation
    module = build_model(cfg.model)
    module.load_state_dict(state)
    module.to(DEVICE).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(2):
        images, mask, targets = _batch(generator)
        targets = [{k: v.to(DEVICE) for k, v in t.items()} for t in targets]
        loss = module.criterion(module.detector(images.to(DEVICE), mask.to(DEVICE)), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_tiny_deta_two_training_steps_match_the_cpu_kernel(tmp_path, synthetic_data_dir):
    overrides = [
        *TINY_OVERRIDES,
        f"paths.data_dir={synthetic_data_dir}",
        "model=deta_small",
        "model.detector.num_encoder_layers=1",
        "model.detector.num_decoder_layers=1",
        "model.detector.enc_n_points=2",
        "model.detector.dec_n_points=2",
    ]
    cfg = compose_config("train", overrides, output_dir=tmp_path)
    torch.manual_seed(0)
    state = build_model(cfg.model).state_dict()
    triton_losses = _two_step_losses(cfg, "triton", state)
    baseline_losses = _two_step_losses(cfg, BASELINE, state)
    assert all(torch.isfinite(torch.tensor(triton_losses)))
    assert triton_losses[0] != triton_losses[1]  # the step changed the weights
    torch.testing.assert_close(triton_losses, baseline_losses, rtol=1e-5, atol=1e-5)
