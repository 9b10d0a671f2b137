"""``python train.py`` draws results.png in its run folder from the run's own metrics.csv."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from detrlab.results_plot import draw_results, read_epoch_series
from tests.helpers import TINY_OVERRIDES

REPO_ROOT = Path(__file__).resolve().parents[2]


# A subprocess run (~15 s of CPU); the in-process runs of test_train.py check results.png too.
@pytest.mark.slow
def test_train_writes_results_png_from_its_metrics_csv(tmp_path, synthetic_data_dir):
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_epochs")]
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "debug=limit",
            *overrides,
            f"paths.data_dir={synthetic_data_dir}",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "run_name=plotted",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "debug" / "runs" / "plotted"
    png = run_dir / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The picture's series are the CSV's: two epochs of losses (train and val) and COCO AP.
    metrics_csv = run_dir / "csv" / "metrics.csv"
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    figure = draw_results(read_epoch_series(metrics_csv))
    lines = {line.get_label(): line for axes in figure.axes for line in axes.get_lines()}
    for column in ("train/loss_epoch", "val/loss", "val/loss_giou", "val/AP", "val/AP50"):
        expected = [(int(row["epoch"]), float(row[column])) for row in rows if row[column]]
        assert [e for e, _ in expected] == [0, 1], column
        assert list(zip(lines[column].get_xdata(), lines[column].get_ydata())) == expected, column
