"""ONNX export of a trained detector: ``python export.py ckpt_path=X output=Y.onnx``.

The graph takes ``images`` float [B, 3, H, W] (normalized, zero-padded) and ``mask`` bool [B, H, W]
(True on padding) with a dynamic batch and image size, and returns ``pred_logits`` and
``pred_boxes`` as the detector does. With ``postprocess=true`` it also takes ``orig_sizes`` int64
[B, 2] (h, w) and returns ``scores`` [B, K], ``labels`` [B, K] and ``boxes`` [B, K, 4] (xyxy pixels
of the original images; score 0 marks padding after NMS). The deformable attention is exported
through its PyTorch path (``grid_sample``), so the graph holds standard ONNX operators only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from detrlab.builders import resolve_num_classes
from detrlab.checkpoint import fill_from_checkpoint, load_checkpoint, model_from_checkpoint
from detrlab.errors import ConfigError, DetrlabError
from detrlab.evaluation.batched_postprocess import BatchedPostProcess
from detrlab.module import DetectionModule

log = logging.getLogger(__name__)

__all__ = ["ExportError", "ExportableDetector", "example_inputs", "export_onnx", "onnxruntime_outputs", "run"]

INPUT_NAMES = ("images", "mask")
OUTPUT_NAMES = ("pred_logits", "pred_boxes")
POSTPROCESS_OUTPUT_NAMES = ("scores", "labels", "boxes")


class ExportError(DetrlabError):
    """The exported graph is missing a dependency or disagrees with PyTorch."""


class ExportableDetector(nn.Module):
    """``(images, mask[, orig_sizes]) -> tuple`` of tensors: the graph signature of the export."""

    def __init__(self, model: DetectionModule, postprocess: bool = False) -> None:
        super().__init__()
        self.detector = model.detector
        self.postprocess = BatchedPostProcess(model.postprocess) if postprocess else None

    def forward(self, images: Tensor, mask: Tensor, orig_sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        outputs = self.detector(images, mask)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if self.postprocess is None:
            return logits, boxes
        return (logits, boxes, *self.postprocess(logits, boxes, orig_sizes))


def example_inputs(batch: int, height: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(images, mask, orig_sizes)``: random images, the last one padded on the right and bottom."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=generator)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    valid_h, valid_w = max(height * 3 // 4, 1), max(width * 2 // 3, 1)
    mask[-1, valid_h:, :] = True
    mask[-1, :, valid_w:] = True
    images[-1] = images[-1].masked_fill(mask[-1], 0.0)
    orig_sizes = torch.tensor([[height * 2, width * 2]] * batch, dtype=torch.int64)
    orig_sizes[-1] = torch.tensor([valid_h * 2, valid_w * 2])
    return images, mask, orig_sizes


def export_onnx(
    model: DetectionModule,
    output: str | Path,
    postprocess: bool = False,
    example_size: tuple[int, int] = (128, 160),
    opset: int = 18,
) -> Path:
    """Write ``model``'s detector as an ONNX graph with a dynamic batch and image size.

    The model should be built with ``attention_implementation=pytorch`` (custom kernels have no
    ONNX operator). Traced with a padded batch of two ``example_size`` images; the exported graph
    accepts sides larger than the detector's coarsest feature stride (smaller inputs make 1-pixel
    feature maps, which the tracer treats as a special case).
    """
    _require("onnxscript")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportableDetector(model, postprocess).eval()
    images, mask, orig_sizes = example_inputs(2, *example_size)
    dynamic = torch.export.Dim.DYNAMIC
    dynamic_shapes: dict = {
        "images": {0: dynamic, 2: dynamic, 3: dynamic},
        "mask": {0: dynamic, 1: dynamic, 2: dynamic},
    }
    args: tuple = (images, mask)
    input_names, output_names = list(INPUT_NAMES), list(OUTPUT_NAMES)
    if postprocess:
        args = (images, mask, orig_sizes)
        dynamic_shapes["orig_sizes"] = {0: dynamic}
        input_names.append("orig_sizes")
        output_names += POSTPROCESS_OUTPUT_NAMES
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            args,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    program.save(str(output))
    return output


def onnxruntime_outputs(path: str | Path, *inputs: Tensor) -> list[np.ndarray]:
    """Run the graph at ``path`` in onnxruntime on the CPU."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})


def run(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path`` to ``cfg.output`` and (``cfg.check``) compare onnxruntime with PyTorch."""
    checkpoint = load_checkpoint(cfg.ckpt_path)
    fill_from_checkpoint(cfg, checkpoint)
    resolve_num_classes(cfg.get("data"))
    with open_dict(cfg):
        if "attention_implementation" in cfg.model.detector:
            cfg.model.detector.attention_implementation = "pytorch"
    # ema=on checkpoints hold averaged and raw weights: the average is exported unless told otherwise
    model = model_from_checkpoint(
        cfg.model, checkpoint, use_averaged=cfg.get("use_averaged_weights", True)
    ).eval()
    example_size = tuple(int(v) for v in cfg.example_size)
    if len(example_size) != 2:
        raise ConfigError(f"example_size must be [height, width], got {list(cfg.example_size)}")
    path = export_onnx(model, cfg.output, bool(cfg.postprocess), example_size, int(cfg.opset))
    log.info("ONNX graph written to %s", path)
    if cfg.get("check"):
        wrapper = ExportableDetector(model, bool(cfg.postprocess)).eval()
        height, width = example_size
        for batch, size in ((2, (height, width)), (3, (height + 32, width - 16))):
            inputs = example_inputs(batch, *size, seed=batch)
            inputs = inputs if cfg.postprocess else inputs[:2]
            with torch.no_grad():
                expected = wrapper(*inputs)
            got = onnxruntime_outputs(path, *inputs)
            differences = [
                np.abs(a.astype(np.float64) - b.double().numpy()).max() for a, b in zip(got, expected)
            ]
            if cfg.postprocess:
                # pixel boxes: compared relative to the image size, like the normalized ones
                differences[-1] /= float(inputs[2].max())
            worst = float(max(differences))
            if worst > float(cfg.tolerance):
                raise ExportError(
                    f"onnxruntime differs from PyTorch by {worst:.2e} (> tolerance={cfg.tolerance}) on a "
                    f"batch of {batch} at {size}; the graph at {path} is not trustworthy"
                )
            log.info(
                "onnxruntime matches PyTorch on %d images of %s (max difference %.1e)", batch, size, worst
            )
    return path


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise ExportError(
            f"ONNX export needs the `{module}` package: pip install 'detrlab[export]'"
        ) from error
