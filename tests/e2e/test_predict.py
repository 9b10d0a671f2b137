"""predict.run: a trained checkpoint detects objects in image files, writes JSON and drawn images."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from detrlab import predict, train
from detrlab.data.synthetic import SHAPE_NAMES
from tests.e2e.test_cli import run_cli
from tests.helpers import compose_config


def _edge_pixels(image: torch.Tensor, box: list[float]) -> torch.Tensor:
    """[3, P] pixels on the bottom and right edges of an xywh box (captions sit top-left)."""
    height, width = image.shape[-2:]
    x, y, w, h = box
    x0, y0 = int(x), int(y)
    x1, y1 = min(int(x + w), width - 1), min(int(y + h), height - 1)
    bottom = image[:, y1, x0 : x1 + 1]
    right = image[:, y0 : y1 + 1, x1]
    return torch.cat([bottom, right], dim=1)


def test_predict_writes_results_and_draws_the_boxes(tiny_train_cfg, tmp_path):
    train.run(tiny_train_cfg)
    run_dir = Path(tiny_train_cfg.paths.output_dir)
    # The validation renderings of LogDetections went to the CSV logger's folder.
    assert (run_dir / "csv" / "val_images" / "epoch_000_0.png").is_file()

    # Inputs: two validation JPEGs converted to PNG (lossless, so drawn pixels can be compared),
    # a grayscale and an RGBA image in a subfolder.
    val_dir = Path(tiny_train_cfg.data.root) / "val"
    inputs = tmp_path / "inputs"
    (inputs / "more").mkdir(parents=True)
    sources = sorted(val_dir.glob("*.jpg"))[:2]
    for source in sources:
        Image.open(source).convert("RGB").save(inputs / f"{source.stem}.png")
    Image.open(sources[0]).convert("L").save(inputs / "more" / "gray.png")
    Image.open(sources[1]).convert("RGBA").save(inputs / "more" / "rgba.png")

    out_dir = tmp_path / "predict"
    last = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_config(
        "predict", [f"ckpt_path={last}", f"input={inputs}", "score_threshold=0.0", "num_workers=0"], out_dir
    )
    summary = predict.run(cfg)

    expected = sorted(p.relative_to(inputs).as_posix() for p in inputs.rglob("*.png"))
    drawn = sorted(p.relative_to(out_dir / "images").as_posix() for p in (out_dir / "images").rglob("*.png"))
    assert drawn == expected
    results = json.loads((out_dir / "predictions.json").read_text())
    assert summary == {
        "images": 4,
        "detections": len(results),
        "results_file": str(out_dir / "predictions.json"),
        "image_dir": str(out_dir / "images"),
    }
    # score_threshold=0 keeps every detection the post-processor returns: some on every image.
    assert {r["file_name"] for r in results} == set(expected)
    # The synthetic dataset's category ids are 1..3, its names the shapes; ids and names agree.
    assert {r["category_id"] for r in results} <= {1, 2, 3}
    assert all(r["category_name"] == SHAPE_NAMES[r["category_id"] - 1] for r in results)

    for name in expected:
        original = decode_image(str(inputs / name), mode=ImageReadMode.RGB)
        output = decode_image(str(out_dir / "images" / name))
        assert output.shape == original.shape  # drawn at the file's own resolution, as RGB
        mine = [r for r in results if r["file_name"] == name]
        best = max(mine, key=lambda r: r["score"])
        changed = (_edge_pixels(output, best["bbox"]) != _edge_pixels(original, best["bbox"])).any(0)
        # The most confident box is drawn last (on top): its edges are painted.
        assert changed.float().mean() > 0.9, name
        assert all(r["bbox"][0] >= 0 and r["bbox"][0] + r["bbox"][2] <= original.shape[-1] + 1 for r in mine)


def test_predict_cli_names_a_missing_input(tmp_path):
    result = run_cli("predict.py", f"ckpt_path={tmp_path / 'none.ckpt'}", f"input={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1
    assert "none.ckpt does not exist" in result.stderr
