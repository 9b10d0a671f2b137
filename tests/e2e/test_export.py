"""ONNX export: the graph run by onnxruntime on CPU equals PyTorch (1e-4) at several sizes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from detrlab import export
from detrlab.builders import build_model
from detrlab.callbacks.config_in_checkpoint import CHECKPOINT_CONFIG_KEY
from detrlab.export import example_inputs, onnxruntime_outputs
from tests.helpers import TINY_OVERRIDES, compose_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# (batch, height, width): the padded batch at two image sizes, and a single image
SIZES = [(2, 96, 128), (3, 160, 112), (1, 80, 200)]


def _checkpoint(model_name: str, tmp_path, data_dir):
    """A checkpoint of a randomly initialised small model, written like a training run's."""
    cfg = compose_config(
        "train", [*TINY_OVERRIDES, f"model={model_name}", f"paths.data_dir={data_dir}"], tmp_path / "train"
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = tmp_path / "model.ckpt"
    stored = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "data")}
    torch.save({"state_dict": model.state_dict(), CHECKPOINT_CONFIG_KEY: stored}, path)
    return path, model


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["detr_small", "deta_small"])
def test_onnxruntime_equals_pytorch(model_name, tmp_path, synthetic_data_dir):
    ckpt, model = _checkpoint(model_name, tmp_path, synthetic_data_dir)
    output = tmp_path / "model.onnx"
    cfg = compose_config(
        "export",
        [f"ckpt_path={ckpt}", f"output={output}", "postprocess=true", "check=false"],
        tmp_path / "export",
    )
    assert export.run(cfg) == output

    import onnx

    graph = onnx.load(str(output)).graph
    assert [i.name for i in graph.input] == ["images", "mask", "orig_sizes"]
    assert [o.name for o in graph.output][:2] == ["pred_logits", "pred_boxes"]
    for batch, height, width in SIZES:
        images, mask, orig_sizes = example_inputs(batch, height, width, seed=batch)
        # The reference is the model as trained and evaluated (the compiled kernel on CPU).
        with torch.no_grad():
            outputs = model.detector(images, mask)
            predictions = model.postprocess(outputs, orig_sizes)
        logits, boxes, scores, labels, pixel_boxes = (
            torch.from_numpy(a) for a in onnxruntime_outputs(output, images, mask, orig_sizes)
        )
        torch.testing.assert_close(logits, outputs["pred_logits"], atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes, outputs["pred_boxes"], atol=1e-4, rtol=0)
        for i, prediction in enumerate(predictions):
            count = len(prediction["scores"])
            torch.testing.assert_close(scores[i, :count], prediction["scores"], atol=1e-4, rtol=0)
            torch.testing.assert_close(labels[i, :count], prediction["labels"], atol=0, rtol=0)
            # pixels: 1e-4 relative to the image size
            torch.testing.assert_close(pixel_boxes[i, :count], prediction["boxes"], atol=1e-4 * 400, rtol=0)
            assert (scores[i, count:] == 0).all()


def test_export_names_a_missing_checkpoint(tmp_path):
    cfg = compose_config("export", [f"ckpt_path={tmp_path / 'missing.ckpt'}"], tmp_path)
    from detrlab.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"missing\.ckpt"):
        export.run(cfg)
