"""Drawing detections: boxes land where predicted, in the class colour, nothing else changes."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from detrlab.callbacks.log_detections import _send
from detrlab.visualization import (
    GROUND_TRUTH_COLOR,
    PREDICTION_COLOR,
    class_colors,
    draw_ground_truth_and_predictions,
    draw_predictions,
)

NAMES = ["circle", "square", "triangle"]


def _gray_image(height=120, width=160):
    return torch.full((3, height, width), 128, dtype=torch.uint8)


def _pixel(image, x, y):
    return tuple(int(v) for v in image[:, y, x])


def test_class_colors_are_distinct():
    colors = class_colors(80)
    assert len(set(colors)) == 80


def test_boxes_are_drawn_on_their_edges_in_the_class_colour_and_only_there():
    image = _gray_image()
    prediction = {
        "scores": torch.tensor([0.9, 0.1]),
        "labels": torch.tensor([2, 0]),
        "boxes": torch.tensor([[20.0, 30.0, 100.0, 90.0], [110.0, 5.0, 150.0, 40.0]]),
    }
    drawn = draw_predictions(image, prediction, NAMES, score_threshold=0.5, width=2)
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    color = class_colors(3)[2]
    # Bottom and right edges of the kept box (the caption sits at the top-left corner).
    for x in range(30, 95):
        assert _pixel(drawn, x, 90) == color
    for y in range(50, 88):
        assert _pixel(drawn, 100, y) == color
    # The box below the threshold is not drawn; the input image is untouched.
    assert torch.equal(drawn[:, :, 105:], image[:, :, 105:])
    assert torch.equal(image, _gray_image())
    # Outside the kept box nothing changed.
    outside = torch.ones(image.shape[-2:], dtype=torch.bool)
    outside[29:92, 19:102] = False
    assert torch.equal(drawn[:, outside], image[:, outside])


def test_ground_truth_is_green_and_predictions_red():
    image = _gray_image()
    drawn = draw_ground_truth_and_predictions(
        image,
        target_boxes=torch.tensor([[10.0, 10.0, 60.0, 60.0]]),
        target_labels=torch.tensor([1]),
        prediction={
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([1]),
            "boxes": torch.tensor([[80.0, 20.0, 150.0, 110.0]]),
        },
        class_names=NAMES,
    )
    assert _pixel(drawn, 40, 60) == GROUND_TRUTH_COLOR
    assert _pixel(drawn, 120, 110) == PREDICTION_COLOR


def test_boxes_outside_the_image_are_clipped_and_empty_predictions_copy_the_image():
    image = _gray_image()
    prediction = {
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([0]),
        "boxes": torch.tensor([[-20.0, -10.0, 400.0, 300.0]]),
    }
    drawn = draw_predictions(image, prediction, NAMES)
    assert _pixel(drawn, 80, 119) == class_colors(3)[0]  # bottom edge clipped to the last row
    empty = {
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "boxes": torch.zeros(0, 4),
    }
    assert torch.equal(draw_predictions(image, empty, NAMES), image)


def test_renderings_reach_tensorboard_and_csv_loggers(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    images = [_gray_image(), _gray_image(60, 80)]
    tensorboard = TensorBoardLogger(save_dir=str(tmp_path), name="tb", version="")
    _send(tensorboard, images, epoch=3, step=40)
    tensorboard.experiment.flush()
    events = accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["val/detections/0", "val/detections/1"]
    assert events.Images("val/detections/1")[0].step == 40

    csv = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    _send(csv, images, epoch=3, step=40)
    written = sorted(p.name for p in (tmp_path / "csv" / "val_images").iterdir())
    assert written == ["epoch_003_0.png", "epoch_003_1.png"]
