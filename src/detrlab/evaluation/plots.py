"""Evaluation figures drawn with matplotlib: precision-recall, F1 against confidence, confusion matrix.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly (no ``pyplot``), so
drawing needs no display, changes no global backend and is safe in dataloader workers and DDP ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detrlab.evaluation.confusion import confusion_matrix_from_coco
from detrlab.evaluation.curves import PrecisionRecallCurves, precision_recall_curves

__all__ = [
    "PLOT_NAMES",
    "evaluation_figures",
    "figure_to_array",
    "plot_confusion_matrix",
    "plot_f1_confidence",
    "plot_precision_recall",
    "save_figures",
]

#: File stems of the figures :func:`evaluation_figures` returns, in order.
PLOT_NAMES = ("pr_curve_iou50", "pr_curve_iou50_95", "f1_confidence", "confusion_matrix")

# With more classes than this, per-class curves are drawn thin and grey without a legend entry
# (80 COCO names would hide the plot).
_MAX_LEGEND_CLASSES = 20


def plot_precision_recall(curves: PrecisionRecallCurves) -> Figure:
    """Per-class curves and the class mean (bold), with each curve's area (its AP) in the legend."""
    figure, axes = _figure()
    areas = curves.class_areas()
    labelled = len(areas) <= _MAX_LEGEND_CLASSES
    for k, name in enumerate(curves.class_names):
        if not curves.has_ground_truth[k]:
            continue
        style = {"linewidth": 1.0} if labelled else {"linewidth": 0.5, "color": "grey", "alpha": 0.6}
        label = f"{name} {areas[name]:.3f}" if labelled else None
        axes.plot(curves.recall, curves.precision[k], label=label, **style)
    mean_area = float(np.trapezoid(curves.overall_precision, curves.recall))
    axes.plot(
        curves.recall,
        curves.overall_precision,
        color="blue",
        linewidth=3,
        label=f"all classes {mean_area:.3f}",
    )
    _finish(axes, "Recall", "Precision", f"Precision-recall, IoU {curves.iou_label} (legend: AP)")
    return figure


def plot_f1_confidence(curves: PrecisionRecallCurves, num_thresholds: int = 101) -> Figure:
    """F1 of each class and of the class mean against the confidence threshold; the best mean F1 is marked."""
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    f1 = curves.f1_at_confidence(thresholds)
    figure, axes = _figure()
    labelled = int(curves.has_ground_truth.sum()) <= _MAX_LEGEND_CLASSES
    for k, name in enumerate(curves.class_names):
        if not curves.has_ground_truth[k]:
            continue
        style = {"linewidth": 1.0} if labelled else {"linewidth": 0.5, "color": "grey", "alpha": 0.6}
        axes.plot(thresholds, f1[k], label=name if labelled else None, **style)
    defined = f1[curves.has_ground_truth]
    mean_f1 = defined.mean(axis=0) if len(defined) else np.zeros_like(thresholds)
    best = int(np.argmax(mean_f1))
    axes.plot(
        thresholds,
        mean_f1,
        color="blue",
        linewidth=3,
        label=f"all classes {mean_f1[best]:.2f} at {thresholds[best]:.2f}",
    )
    _finish(axes, "Confidence", "F1", f"F1 against confidence, IoU {curves.iou_label}")
    return figure


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], normalize: bool = True) -> Figure:
    """The ``[C+1, C+1]`` matrix (rows ground truth, columns prediction, last background).

    With ``normalize`` each row is divided by its sum (the share of a true class's boxes that went
    to each prediction; the background row by its own sum of spurious detections); counts are
    printed in the cells when there are at most 30 classes.
    """
    labels = [*class_names, "background"]
    counts = np.asarray(matrix, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        shown = counts / counts.sum(axis=1, keepdims=True) if normalize else counts
    shown = np.nan_to_num(shown)
    side = min(4.0 + 0.45 * len(labels), 30.0)
    figure = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(labels))
    axes.set_xticks(ticks, labels, rotation=90 if len(labels) > 10 else 45, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("Ground truth")
    if len(labels) <= 31:
        threshold = shown.max() / 2 if shown.max() > 0 else 1.0
        for row in range(len(labels)):
            for column in range(len(labels)):
                if counts[row, column] == 0:
                    continue
                color = "white" if shown[row, column] > threshold else "black"
                axes.text(
                    column,
                    row,
                    f"{int(counts[row, column])}",
                    ha="center",
                    va="center",
                    color=color,
                    fontsize=8,
                )
    axes.set_title("Confusion matrix (row-normalised, counts in cells)" if normalize else "Confusion matrix")
    figure.tight_layout()
    return figure


def evaluation_figures(
    evaluator, iou_threshold: float = 0.5, score_threshold: float = 0.3
) -> dict[str, Figure]:
    """All evaluation figures of a :class:`~detrlab.evaluation.coco_eval.CocoEvaluator` after ``compute()``.

    Returns:
        ``{name: Figure}`` keyed by :data:`PLOT_NAMES`; the curves are left out when the run had no
        detection at all (COCO accumulates nothing then), the confusion matrix is always there.
    """
    class_names = [str(evaluator.coco_gt.cats[c]["name"]) for c in sorted(evaluator.coco_gt.cats)]
    figures: dict[str, Figure] = {}
    coco_eval = evaluator.coco_eval
    if coco_eval is not None:
        at_50, averaged = precision_recall_curves(coco_eval, class_names)
        figures["pr_curve_iou50"] = plot_precision_recall(at_50)
        figures["pr_curve_iou50_95"] = plot_precision_recall(averaged)
        figures["f1_confidence"] = plot_f1_confidence(at_50)
    matrix = confusion_matrix_from_coco(
        evaluator.coco_gt,
        evaluator.predictions,
        evaluator.image_ids,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
    )
    figures["confusion_matrix"] = plot_confusion_matrix(matrix, class_names)
    return figures


def figure_to_array(figure: Figure) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB pixels of a figure (for TensorBoard and W&B)."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figures(figures: dict[str, Figure], folder: str | Path) -> dict[str, Path]:
    """Write each figure as ``<folder>/<name>.png``; returns the paths by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, figure in figures.items():
        paths[name] = folder / f"{name}.png"
        figure.savefig(paths[name])
    return paths


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _finish(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    axes.figure.tight_layout()
