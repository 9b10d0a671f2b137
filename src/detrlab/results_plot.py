"""``results.png``: a run's loss terms and COCO metrics over epochs, drawn from its ``metrics.csv``.

The CSV logger writes one row per logging event, with empty cells for the keys not logged at that
moment; every quantity here is logged once per epoch (training losses as ``train/<term>_epoch``,
validation ones as ``val/<term>``, COCO numbers as ``val/AP`` ...), so each column becomes one
series over epochs. Only the final decoder layer's terms and the total are drawn; the auxiliary
terms (``_0``, ``_1``, ... per earlier layer, ``_enc`` for the two-stage encoder) stay in the CSV.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

#: The COCO metric panels: title and the ``val/`` keys drawn in it.
METRIC_PANELS = (
    ("AP", ("AP", "AP50", "AP75")),
    ("AP by object size", ("APs", "APm", "APl")),
    ("AR", ("AR1", "AR10", "AR100")),
)
# Auxiliary per-layer (`loss_ce_0`) and encoder (`loss_ce_enc`) terms.
_AUXILIARY_TERM = re.compile(r"_(\d+|enc)$")
_PANEL_COLUMNS = 4


@dataclass
class Series:
    """One CSV column over epochs: ``epochs[i]`` and ``values[i]`` (NaN where COCO reports -1)."""

    epochs: list[int]
    values: list[float]


def read_epoch_series(metrics_csv: str | Path) -> dict[str, Series]:
    """Every column of ``metrics_csv`` as a series over the ``epoch`` column.

    A column's empty cells are skipped; when an epoch has several values (a resumed run that
    repeated part of an epoch), the last one counts. COCO's ``-1`` ("no objects of this size")
    becomes NaN, so it leaves a gap instead of a dip.
    """
    by_column: dict[str, dict[int, float]] = {}
    with Path(metrics_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for column, cell in row.items():
                if column in ("epoch", "step") or cell in (None, ""):
                    continue
                value = float(cell)
                if column.startswith("val/A") and value == -1.0:
                    value = math.nan
                by_column.setdefault(column, {})[epoch] = value
    return {
        column: Series(epochs=sorted(values), values=[values[e] for e in sorted(values)])
        for column, values in by_column.items()
    }


def loss_panels(series: dict[str, Series]) -> list[tuple[str, list[str]]]:
    """``(term, [columns])`` for each final-layer loss term: its training and validation columns."""
    terms: list[str] = []
    for column in series:
        stage, _, name = column.partition("/")
        if stage == "train" and name.endswith("_epoch"):
            name = name[: -len("_epoch")]
        elif stage != "val":
            continue
        if name.startswith("loss") and not _AUXILIARY_TERM.search(name) and name not in terms:
            terms.append(name)
    # The total first, then the terms in a stable order.
    terms.sort(key=lambda term: (term != "loss", term))
    panels = []
    for term in terms:
        columns = [c for c in (f"train/{term}_epoch", f"val/{term}") if c in series]
        panels.append((term, columns))
    return panels


def draw_results(series: dict[str, Series]) -> Figure:
    """A grid of panels: one per loss term (train and val), then the COCO AP / AR panels.

    Every line's label is the CSV column it draws, so the figure can be checked against the file.
    """
    panels = loss_panels(series)
    panels += [
        (title, [f"val/{key}" for key in keys if f"val/{key}" in series]) for title, keys in METRIC_PANELS
    ]
    panels = [(title, columns) for title, columns in panels if columns]
    rows = max(1, math.ceil(len(panels) / _PANEL_COLUMNS))
    figure = Figure(figsize=(4 * _PANEL_COLUMNS, 3 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (title, columns) in enumerate(panels):
        axes = figure.add_subplot(rows, _PANEL_COLUMNS, index + 1)
        for column in columns:
            line = series[column]
            axes.plot(line.epochs, line.values, marker="o", markersize=3, label=column)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    if not panels:
        figure.text(0.5, 0.5, "no per-epoch metrics in metrics.csv", ha="center", va="center")
    return figure


def write_results_plot(metrics_csv: str | Path, output_path: str | Path) -> Path:
    """Draw ``metrics_csv`` (see :func:`draw_results`) into the PNG ``output_path``."""
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    draw_results(read_epoch_series(metrics_csv)).savefig(output_path, dpi=100)
    return output_path
