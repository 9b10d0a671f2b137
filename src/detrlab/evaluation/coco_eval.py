"""COCO bounding-box evaluation (AP/AR) of post-processed predictions, single-process or distributed."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster

from detrlab.utils import dist
from detrlab.utils.boxes import xyxy_to_xywh

__all__ = ["STAT_NAMES", "CocoEvaluator"]

# What a COCO statistic measures unless it says otherwise: IoU range, object area, detections per image.
_DEFAULT_SETTINGS: dict[str, Any] = {"iou": "0.50:0.95", "area": "all", "max_dets": 100}

# The 12 standard bbox statistics in COCOeval's order, each with where it differs from _DEFAULT_SETTINGS
# (the text summary prints all three settings).
_STATISTICS: dict[str, dict[str, Any]] = {
    "AP": {},
    "AP50": {"iou": "0.50"},
    "AP75": {"iou": "0.75"},
    "APs": {"area": "small"},
    "APm": {"area": "medium"},
    "APl": {"area": "large"},
    "AR1": {"max_dets": 1},
    "AR10": {"max_dets": 10},
    "AR100": {},
    "ARs": {"area": "small"},
    "ARm": {"area": "medium"},
    "ARl": {"area": "large"},
}

#: Names of COCOeval's 12 standard bbox statistics, in its order.
STAT_NAMES: tuple[str, ...] = tuple(_STATISTICS)

# Columns of the per-image prediction arrays kept between update() and compute().
_X, _Y, _W, _H, _SCORE, _CATEGORY = range(6)


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """Swallows faster-coco-eval's progress messages (one block per validation epoch otherwise)."""


class CocoEvaluator:
    """Accumulates detections over an evaluation run and scores them with the COCO bbox protocol.

    Typical use: :meth:`update` per batch, then :meth:`gather` on every rank (distributed runs),
    :meth:`compute`, optionally :meth:`per_class_ap` / :meth:`summary_table` / :meth:`write_results`,
    and :meth:`reset` before the next run.

    Only the images passed to :meth:`update` are evaluated (an image with no detection still counts
    for recall), so evaluating a subset of a dataset is fine.

    Args:
        coco_gt: Ground truth: a COCO annotation JSON path, a ``pycocotools.coco.COCO`` (its dataset
            dict is re-indexed by ``faster_coco_eval``; the caller's object is not modified) or a
            ``faster_coco_eval.COCO`` (used as is).
        label_to_category_id: ``label_to_category_id[label]`` is the dataset category id of the
            contiguous label ``label``; ``None`` when labels already are category ids.
        drop_unknown_categories: detections whose category id the ground truth does not define
            are dropped (they could never match) instead of making the map an error. For models
            whose own label map covers more categories than the dataset (91-logit COCO models
            evaluated on a subset of COCO's categories).
    """

    def __init__(
        self,
        coco_gt: Any,
        label_to_category_id: Sequence[int] | None = None,
        drop_unknown_categories: bool = False,
    ) -> None:
        self.coco_gt = _as_faster_coco(coco_gt)
        self.label_to_category_id = (
            None if label_to_category_id is None else [int(c) for c in label_to_category_id]
        )
        self._known_categories = torch.tensor(sorted(self.coco_gt.cats), dtype=torch.float64)
        self.drop_unknown_categories = drop_unknown_categories
        if self.label_to_category_id is not None and not drop_unknown_categories:
            unknown = sorted(set(self.label_to_category_id) - set(self.coco_gt.cats))
            if unknown:
                raise ValueError(
                    f"CocoEvaluator: label_to_category_id names category ids {unknown} that the ground "
                    f"truth does not define (its ids: {sorted(self.coco_gt.cats)[:20]}...); pass the "
                    "dataset's own label_to_category_id"
                )
        # image_id -> float64 [K, 6] (x, y, w, h, score, category_id)
        self._predictions: dict[int, np.ndarray] = {}
        self._eval: COCOeval_faster | None = None
        self._stats: dict[str, float] | None = None

    def reset(self) -> None:
        """Forget all predictions and results (start a new evaluation run)."""
        self._predictions = {}
        self._eval = None
        self._stats = None

    @property
    def image_ids(self) -> list[int]:
        """Sorted ids of the images that have been passed to :meth:`update` (after gather: all ranks)."""
        return sorted(self._predictions)

    @property
    def predictions(self) -> dict[int, np.ndarray]:
        """``image_id -> float64 [K, 6]`` rows ``(x, y, w, h, score, category_id)`` in original-image
        pixels (dataset category ids), as accumulated so far. Read only."""
        return self._predictions

    @property
    def coco_eval(self) -> COCOeval_faster | None:
        """The accumulated ``COCOeval_faster`` of the last :meth:`compute` (its ``eval["precision"]``
        and ``eval["scores"]`` arrays feed the curves); ``None`` before it or when there was no detection."""
        return self._eval

    def update(self, image_ids: Sequence[int], predictions: Sequence[dict[str, torch.Tensor]]) -> None:
        """Add the detections of some images.

        Args:
            image_ids: Dataset image ids, one per prediction dict.
            predictions: Post-processor outputs: ``scores`` ``[K]``, ``labels`` int64 ``[K]``
                (contiguous), ``boxes`` ``[K, 4]`` absolute xyxy in original-image pixels.
                An image seen before keeps its first predictions.
        """
        if len(image_ids) != len(predictions):
            raise ValueError(
                f"CocoEvaluator.update: got {len(image_ids)} image ids but {len(predictions)} prediction "
                "dicts; pass one prediction dict per image"
            )
        for image_id, prediction in zip(image_ids, predictions):
            image_id = int(image_id)
            if image_id not in self.coco_gt.imgs:
                raise ValueError(
                    f"CocoEvaluator.update: image_id {image_id} is not in the ground-truth annotations; "
                    "evaluate with the annotation file of the dataset the images come from"
                )
            if image_id in self._predictions:
                continue
            self._predictions[image_id] = self._to_rows(prediction)
        self._eval, self._stats = None, None

    def _to_rows(self, prediction: dict[str, torch.Tensor]) -> np.ndarray:
        labels = prediction["labels"].detach().cpu().long()
        if self.label_to_category_id is None:
            category_ids = labels.double()
        else:
            if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.label_to_category_id)):
                raise ValueError(
                    f"CocoEvaluator.update: labels must be in 0..{len(self.label_to_category_id) - 1} "
                    f"(len(label_to_category_id)), got range {int(labels.min())}..{int(labels.max())}"
                )
            category_ids = torch.tensor(self.label_to_category_id, dtype=torch.float64)[labels]
        boxes = xyxy_to_xywh(prediction["boxes"].detach().cpu().double())
        scores = prediction["scores"].detach().cpu().double()
        rows = torch.cat([boxes, scores[:, None], category_ids[:, None]], dim=1)
        if self.drop_unknown_categories:
            rows = rows[torch.isin(category_ids, self._known_categories)]
        return rows.numpy()

    def gather(self) -> None:
        """Merge the predictions of all ranks into every rank (a collective: call it on all ranks).

        Distributed samplers pad the last batch by repeating images; each image id keeps the
        predictions of the lowest rank that saw it. A no-op outside distributed runs.
        """
        merged: dict[int, np.ndarray] = {}
        for rank_predictions in dist.all_gather_objects(self._predictions):
            for image_id, rows in rank_predictions.items():
                merged.setdefault(image_id, rows)
        self._predictions = merged
        self._eval, self._stats = None, None

    def results(self) -> list[dict[str, Any]]:
        """Predictions in COCO results format: dicts ``image_id``, ``category_id``, ``bbox`` (xywh),
        ``score``; sorted by image id."""
        results = []
        for image_id in sorted(self._predictions):
            for row in self._predictions[image_id].tolist():
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": int(row[_CATEGORY]),
                        "bbox": row[_X : _H + 1],
                        "score": row[_SCORE],
                    }
                )
        return results

    def compute(self) -> dict[str, float]:
        """Run the COCO bbox evaluation on the images seen so far.

        Returns:
            The 12 COCO statistics keyed ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``,
            ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl`` (fractions in [0, 1]; -1 where COCO finds no
            ground truth for a statistic, e.g. no small objects). All 0.0 when there is no detection
            at all (nothing to rank).
        """
        results = self.results()
        if not results:
            self._eval = None
            self._stats = dict.fromkeys(STAT_NAMES, 0.0)
            return dict(self._stats)
        coco_dt = self.coco_gt.loadRes(results)
        coco_eval = COCOeval_faster(self.coco_gt, coco_dt, iouType="bbox", print_function=_quiet)
        coco_eval.params.imgIds = self.image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        self._eval = coco_eval
        self._stats = {
            name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats[: len(STAT_NAMES)])
        }
        return dict(self._stats)

    def per_class_ap(self) -> dict[str, float]:
        """AP@[.50:.95] (area all, 100 detections) per category name, from the last :meth:`compute`.

        Categories without ground truth in the evaluated images have no defined AP and get NaN.
        With no detection at all every category gets 0.0.
        """
        self._require_computed("per_class_ap")
        names = {cat_id: cat["name"] for cat_id, cat in self.coco_gt.cats.items()}
        if self._eval is None:
            return {names[cat_id]: 0.0 for cat_id in sorted(names)}
        # precision: [T iou thresholds, R recall points, K categories, A areas, M maxDets]; -1 = no GT
        precision = np.asarray(self._eval.eval["precision"])
        area_all = list(self._eval.params.areaRngLbl).index("all")
        per_class = {}
        for k, cat_id in enumerate(self._eval.params.catIds):
            values = precision[:, :, k, area_all, -1]
            values = values[values > -1]
            per_class[names[int(cat_id)]] = float(values.mean()) if values.size else math.nan
        return per_class

    def summary_table(self) -> str:
        """The 12-line COCO summary (as printed by ``COCOeval.summarize``) of the last :meth:`compute`."""
        self._require_computed("summary_table")
        assert self._stats is not None
        lines = []
        for name, settings in _STATISTICS.items():
            kind = name[:2]
            title = "Average Precision" if kind == "AP" else "Average Recall"
            row = {**_DEFAULT_SETTINGS, **settings}
            lines.append(
                f" {title:<18} ({kind}) @[ IoU={row['iou']:<9} | area={row['area']:>6s} | "
                f"maxDets={row['max_dets']:>3d} ] "
                f"= {self._stats[name]:0.3f}"
            )
        return "\n".join(lines)

    def write_results(self, path: str | os.PathLike) -> None:
        """Write the predictions as a COCO results JSON (see :meth:`results`); creates parent folders."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            json.dump(self.results(), f)

    def _require_computed(self, method: str) -> None:
        if self._stats is None:
            raise RuntimeError(f"CocoEvaluator.{method}() needs results: call compute() first")


def _as_faster_coco(coco_gt: Any) -> FasterCOCO:
    """Index the ground truth with faster-coco-eval's COCO class, whatever form it was given in."""
    if isinstance(coco_gt, FasterCOCO):
        return coco_gt
    if isinstance(coco_gt, (str, os.PathLike)):
        if not Path(coco_gt).is_file():
            raise FileNotFoundError(f"CocoEvaluator: annotation file {str(coco_gt)!r} does not exist")
        return FasterCOCO(os.fspath(coco_gt), print_function=_quiet)
    dataset = getattr(coco_gt, "dataset", None)
    if not isinstance(dataset, dict):
        raise TypeError(
            "CocoEvaluator: coco_gt must be an annotation JSON path or a COCO object (pycocotools or "
            f"faster_coco_eval) with a `dataset` dict, got {type(coco_gt).__name__}"
        )
    # Evaluation writes flags into the ground-truth annotation dicts; copy them so the caller's
    # COCO object stays untouched (images/categories are only read).
    dataset = {**dataset, "annotations": [dict(ann) for ann in dataset.get("annotations", [])]}
    return FasterCOCO(dataset, print_function=_quiet)
