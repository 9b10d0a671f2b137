"""results.png: every drawn line is a column of metrics.csv over its epochs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from detrlab.results_plot import draw_results, loss_panels, read_epoch_series, write_results_plot

COLUMNS = [
    "epoch",
    "step",
    "train/loss_epoch",
    "train/loss_ce_epoch",
    "train/loss_ce_0_epoch",
    "val/loss",
    "val/loss_ce",
    "val/loss_ce_enc",
    "val/AP",
    "val/AP50",
    "val/APl",
    "val/class_error",
]


def _write_csv(path: Path) -> Path:
    # As Lightning's CSV logger writes it: the validation row and the training-epoch row of an
    # epoch are separate, with empty cells for what was not logged in them.
    rows = []
    for epoch in range(3):
        rows.append(
            {
                "epoch": epoch,
                "step": 4 * epoch + 3,
                "val/loss": 5 - epoch,
                "val/loss_ce": 1 - 0.1 * epoch,
                "val/loss_ce_enc": 2,
                "val/AP": 0.1 * epoch,
                "val/AP50": 0.2 * epoch,
                "val/APl": -1 if epoch == 0 else 0.3,
                "val/class_error": 50,
            }
        )
        rows.append(
            {
                "epoch": epoch,
                "step": 4 * epoch + 3,
                "train/loss_epoch": 6 - epoch,
                "train/loss_ce_epoch": 1.5 - 0.2 * epoch,
                "train/loss_ce_0_epoch": 1.6,
            }
        )
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _csv_column(path: Path, column: str) -> tuple[list[int], list[float]]:
    with path.open(newline="") as handle:
        cells = [(int(row["epoch"]), float(row[column])) for row in csv.DictReader(handle) if row[column]]
    return [e for e, _ in cells], [
        math.nan if v == -1 and column.startswith("val/AP") else v for _, v in cells
    ]


def _lines(figure) -> dict[str, tuple[list[float], list[float]]]:
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for axes in figure.axes
        for line in axes.get_lines()
    }


def test_panels_hold_the_final_layer_terms_and_the_coco_metrics(tmp_path):
    series = read_epoch_series(_write_csv(tmp_path / "metrics.csv"))
    assert loss_panels(series) == [
        ("loss", ["train/loss_epoch", "val/loss"]),
        ("loss_ce", ["train/loss_ce_epoch", "val/loss_ce"]),
    ]
    titles = [axes.get_title() for axes in draw_results(series).axes]
    assert titles == ["loss", "loss_ce", "AP", "AP by object size"]


def test_every_line_is_its_csv_column(tmp_path):
    path = _write_csv(tmp_path / "metrics.csv")
    lines = _lines(draw_results(read_epoch_series(path)))
    drawn = [
        "train/loss_epoch",
        "val/loss",
        "train/loss_ce_epoch",
        "val/loss_ce",
        "val/AP",
        "val/AP50",
        "val/APl",
    ]
    assert sorted(lines) == sorted(drawn)
    for column in drawn:
        epochs, values = _csv_column(path, column)
        assert lines[column][0] == epochs
        assert lines[column][1] == pytest.approx(values, nan_ok=True), column
    assert math.isnan(lines["val/APl"][1][0])  # COCO's -1 (no large objects) is a gap, not a value


def test_png_is_written(tmp_path):
    out = write_results_plot(_write_csv(tmp_path / "metrics.csv"), tmp_path / "run" / "results.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
