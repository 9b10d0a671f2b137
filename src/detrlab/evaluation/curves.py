"""Precision-recall and F1-confidence curves read from a COCO evaluation's accumulated arrays.

``COCOeval.accumulate()`` leaves ``eval["precision"]`` and ``eval["scores"]``, both
``[T, R, K, A, M]`` (IoU thresholds, recall thresholds, categories, area ranges, max-detection
limits). Entry ``[t, r, k, a, m]`` is the interpolated precision (the best precision at any recall
``>= recThrs[r]``) and the score of the detection at which recall ``recThrs[r]`` is reached; ``-1``
marks a category without ground truth. COCO's AP of a category is the mean of its precision over the
101 recall thresholds, so the curves here are exactly what AP summarises: the area under a class's
IoU-0.5 curve is its AP50, and under the 0.5:0.95 curve (precision averaged over IoU thresholds)
its AP.

faster-coco-eval's own ``Curves`` flattens the IoU, area and max-detection axes together and draws
with plotly, so the slicing is done here on the arrays themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PrecisionRecallCurves", "area_under_curve", "precision_recall_curves"]


@dataclass(frozen=True)
class PrecisionRecallCurves:
    """The curves of one IoU setting (a single threshold or the mean over thresholds).

    Attributes:
        iou_label: ``"0.50"`` or ``"0.50:0.95"``, for titles.
        recall: ``[R]`` the recall thresholds (COCO's 101 points 0, 0.01, ..., 1).
        precision: ``[K, R]`` interpolated precision per class; NaN rows for classes without ground truth.
        scores: ``[K, R]`` confidence at which each recall is reached (single threshold only; the
            mean over IoU thresholds has no single score, so NaN there). 0 where the recall is never reached.
        class_names: ``[K]`` names in the evaluation's category order.
        overall_precision: ``[R]`` mean over the classes that have ground truth (its area is the AP).
    """

    iou_label: str
    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    overall_precision: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        defined = ~np.isnan(self.precision).all(axis=1)
        overall = self.precision[defined].mean(axis=0) if defined.any() else np.zeros_like(self.recall)
        object.__setattr__(self, "overall_precision", overall)

    @property
    def has_ground_truth(self) -> np.ndarray:
        """``[K]`` bool: the classes whose curve is defined."""
        return ~np.isnan(self.precision).all(axis=1)

    def class_areas(self) -> dict[str, float]:
        """Area under each defined class curve (its AP at this IoU setting), by class name."""
        return {
            name: area_under_curve(self.recall, self.precision[k])
            for k, name in enumerate(self.class_names)
            if self.has_ground_truth[k]
        }

    def f1(self) -> np.ndarray:
        """``[K, R]`` F1 score ``2PR / (P + R)`` at each recall threshold (0 where P + R = 0)."""
        denominator = self.precision + self.recall[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denominator > 0, 2 * self.precision * self.recall[None, :] / denominator, 0.0)
        return np.where(np.isnan(self.precision), np.nan, f1)

    def f1_at_confidence(self, thresholds: np.ndarray) -> np.ndarray:
        """``[K, len(thresholds)]`` F1 of each class when detections below each confidence are dropped.

        Keeping the detections scoring ``>= c`` reaches the largest recall threshold whose score is
        ``>= c``; the F1 there is the class's F1 at ``c`` (0 when no recall is reached). Recall points
        that are never reached (precision 0) are excluded. NaN rows for classes without ground truth.
        """
        if np.isnan(self.scores).all():
            raise ValueError(f"F1 against confidence needs a single IoU threshold, not {self.iou_label}")
        f1 = np.nan_to_num(self.f1())
        reached = np.nan_to_num(self.precision) > 0  # [K, R]
        kept = (self.scores[:, None, :] >= np.asarray(thresholds)[None, :, None]) & reached[:, None, :]
        # the last (largest) recall index kept at each threshold; -1 when none
        last = np.where(kept.any(axis=2), kept.shape[2] - 1 - np.argmax(kept[:, :, ::-1], axis=2), -1)
        values = np.where(last >= 0, np.take_along_axis(f1, np.maximum(last, 0), axis=1), 0.0)
        return np.where(self.has_ground_truth[:, None], values, np.nan)


def area_under_curve(recall: np.ndarray, precision: np.ndarray) -> float:
    """Trapezoidal area under ``precision(recall)``; both ``[R]`` with recall increasing."""
    return float(np.trapezoid(precision, recall))


def precision_recall_curves(
    coco_eval, class_names: list[str] | None = None, area: str = "all"
) -> tuple[PrecisionRecallCurves, PrecisionRecallCurves]:
    """The IoU-0.5 and the IoU-0.5:0.95 curves of an accumulated ``COCOeval`` (pycocotools or faster-coco-eval).

    Args:
        coco_eval: an evaluator after ``evaluate()`` and ``accumulate()``.
        class_names: names in ``coco_eval.params.catIds`` order; default: the ground truth's names.
        area: the area range label (``"all"``, ``"small"``, ...); the largest max-detection limit is used.

    Returns:
        ``(iou50, iou50_95)``.
    """
    params = coco_eval.params
    precision = np.asarray(coco_eval.eval["precision"], dtype=np.float64)
    scores = np.asarray(coco_eval.eval["scores"], dtype=np.float64)
    recall = np.asarray(params.recThrs, dtype=np.float64)
    area_index = list(params.areaRngLbl).index(area)
    iou_thresholds = np.asarray(params.iouThrs)
    iou50 = np.flatnonzero(np.isclose(iou_thresholds, 0.5))
    if iou50.size == 0:
        raise ValueError(
            f"precision_recall_curves: IoU 0.5 is not among the evaluated thresholds {iou_thresholds}"
        )
    if class_names is None:
        class_names = [str(coco_eval.cocoGt.cats[int(c)]["name"]) for c in params.catIds]

    # [T, R, K] -> [T, K, R], -1 (no ground truth) -> NaN
    precision = np.moveaxis(precision[:, :, :, area_index, -1], 1, 2)
    precision = np.where(precision < 0, np.nan, precision)
    scores = np.moveaxis(scores[:, :, :, area_index, -1], 1, 2)

    at_50 = PrecisionRecallCurves(
        iou_label="0.50",
        recall=recall,
        precision=precision[iou50[0]],
        scores=scores[iou50[0]],
        class_names=list(class_names),
    )
    # COCO averages AP over the IoU thresholds a class has values for; a class with ground truth has all.
    counts = (~np.isnan(precision)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_precision = np.where(counts > 0, np.nansum(precision, axis=0) / counts, np.nan)
    averaged = PrecisionRecallCurves(
        iou_label=f"{iou_thresholds[0]:.2f}:{iou_thresholds[-1]:.2f}",
        recall=recall,
        precision=mean_precision,
        scores=np.full_like(mean_precision, np.nan),
        class_names=list(class_names),
    )
    return at_50, averaged
