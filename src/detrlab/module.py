"""The LightningModule that trains and evaluates any detector of the DETR family."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn

from detrlab.data.collate import Batch
from detrlab.errors import ConfigError
from detrlab.evaluation.coco_eval import CocoEvaluator
from detrlab.optim import OptimSettings, build_optimizer
from detrlab.schedule import build_lr_scheduler
from detrlab.utils.finite import nonfinite_terms

log = logging.getLogger(__name__)

#: COCO statistics logged under ``val/`` after every validation epoch.
LOGGED_COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


class DetectionModule(L.LightningModule):
    """Wraps a detector, its set criterion and its post-processor for training, validation and prediction.

    Args:
        detector: ``detector(images [B,3,H,W], mask [B,H,W]) -> outputs``, the dict of
            ``pred_logits`` / ``pred_boxes`` / ``aux_outputs`` (and two-stage keys) described in
            :class:`detrlab.losses.criterion.SetCriterion`.
        criterion: ``criterion(outputs, targets) -> dict`` of loss terms, with ``loss`` the
            weighted sum that is optimized.
        postprocess: ``postprocess(outputs, orig_sizes [B,2]) -> list[dict]`` of ``scores``,
            ``labels`` and ``boxes`` (absolute xyxy in the original image).
        optim: the optimizer settings (keys of :class:`detrlab.optim.OptimSettings`).
        label_to_category_id: what the detector's class indices mean when they are not the
            dataset's contiguous labels: ``label_to_category_id[index]`` is a category id. Imported
            91-logit COCO models index raw COCO ids (the identity map 0..90). ``None`` (models
            trained here): class index == the dataset's contiguous label.
        num_classes, num_queries: the values that detector and criterion share, written once at the
            top of a model config and referenced by both parts; checked here against the parts
            (``None``: not checked).

    Validation asks the data module for ``validation_ground_truth()`` (the COCO ground truth and
    the label map), computes COCO AP on predictions mapped back to the original images and the
    dataset's own category ids, and logs ``val/AP``, ``val/AP50``, ...

    What callbacks may read (the module's interface for them):
        ``detector``, ``criterion``, ``postprocess``: the parts.
        ``num_classes``: the number of object classes.
        ``predict(images, mask, sizes)``: post-processed detections for a batch.
        ``evaluator``: the :class:`CocoEvaluator` of the latest validation epoch (``None`` before).
        ``nonfinite_terms``: names of the non-finite loss terms of the latest training step.
    """

    def __init__(
        self,
        detector: nn.Module,
        criterion: nn.Module,
        postprocess: nn.Module,
        optim: dict | None = None,
        label_to_category_id: list[int] | None = None,
        num_classes: int | None = None,
        num_queries: int | None = None,
    ):
        super().__init__()
        check_shared_value("num_classes", num_classes, {"detector": detector, "criterion": criterion})
        check_shared_value("num_queries", num_queries, {"detector": detector})
        self.detector = detector
        self.criterion = criterion
        self.postprocess = postprocess
        self.optim_settings = OptimSettings.from_dict(optim)
        self.label_to_category_id = None if label_to_category_id is None else list(label_to_category_id)
        # dataset label -> detector class index, set per validation run when the two differ
        self._dataset_to_model_label: torch.Tensor | None = None
        # The sub-modules are saved in the state dict; only the plain settings are hyper-parameters.
        self.save_hyperparameters(ignore=["detector", "criterion", "postprocess"], logger=False)
        # The evaluator of the latest validation epoch, kept for summaries and results files.
        self.evaluator: CocoEvaluator | None = None
        # Names of the non-finite loss terms of the latest training step (empty when it was finite).
        self.nonfinite_terms: list[str] = []

    @property
    def num_classes(self) -> int:
        """The detector's number of object classes."""
        return int(self.detector.num_classes)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        return self.detector(images, mask)

    def predict(
        self, images: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """Detections of a batch: ``B`` dicts of ``scores`` ``[K]``, ``labels`` ``[K]`` and ``boxes``
        ``[K, 4]`` (absolute xyxy in images of ``sizes`` ``[B, 2]`` (h, w))."""
        return self.postprocess(self.detector(images, mask), sizes)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """``trainer.predict``: detections in the original image sizes, with each target's ``image_id``."""
        orig_sizes = torch.stack([t["orig_size"] for t in batch.targets])
        predictions = self.predict(batch.images, batch.mask, orig_sizes)
        return [{**p, "image_id": t["image_id"]} for p, t in zip(predictions, batch.targets)]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        outputs = self.detector(batch.images, batch.mask)
        losses = self.criterion(outputs, batch.targets)
        self.nonfinite_terms = nonfinite_terms(losses)
        # Every rank must skip together, or DDP's gradient all-reduce would wait forever.
        skip = bool(self.nonfinite_terms)
        if self._trainer is not None:
            skip = self.trainer.strategy.reduce_boolean_decision(skip, all=False)
        if skip:
            self.nonfinite_terms = self.nonfinite_terms or ["loss (on another rank)"]
            # None skips backward and the optimizer step; callbacks.NonFiniteGuard counts the skip.
            return None
        self._log_losses("train", losses, batch_size=len(batch), on_step=True)
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        coco, dataset_category_ids = self._validation_ground_truth()
        if self.label_to_category_id is None:
            self._dataset_to_model_label = None
            self.evaluator = CocoEvaluator(coco, label_to_category_id=dataset_category_ids)
        else:
            self._dataset_to_model_label = dataset_to_model_labels(
                dataset_category_ids, self.label_to_category_id
            ).to(self.device)
            self.evaluator = CocoEvaluator(
                coco, label_to_category_id=self.label_to_category_id, drop_unknown_categories=True
            )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        outputs = self.detector(batch.images, batch.mask)
        targets = batch.targets
        if self._dataset_to_model_label is not None:
            lookup = self._dataset_to_model_label
            targets = [{**t, "labels": lookup[t["labels"]]} for t in targets]
        losses = self.criterion(outputs, targets)
        self._log_losses("val", losses, batch_size=len(batch), on_step=False)
        orig_sizes = torch.stack([t["orig_size"] for t in batch.targets])
        predictions = self.postprocess(outputs, orig_sizes)
        image_ids = [int(t["image_id"]) for t in batch.targets]
        self.evaluator.update(image_ids, [{k: v.detach().cpu() for k, v in p.items()} for p in predictions])

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None:
            return
        # Every rank gathers all predictions and computes the same numbers, so the logged values
        # need no further reduction.
        self.evaluator.gather()
        stats = self.evaluator.compute()
        for key in LOGGED_COCO_STATS:
            self.log(
                f"val/{key}",
                stats[key],
                prog_bar=key in ("AP", "AP50"),
                sync_dist=False,
                rank_zero_only=False,
            )
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log.info(
                "COCO bbox evaluation, epoch %d:\n%s", self.current_epoch, self.evaluator.summary_table()
            )

    def configure_optimizers(self):
        optimizer = build_optimizer(self.detector, self.optim_settings)
        # The schedule's drops are fractions of the run, placed once the trainer knows its length.
        schedule = self.optim_settings.schedule
        total_steps = self.trainer.estimated_stepping_batches if schedule.interval == "step" else None
        scheduler = build_lr_scheduler(
            optimizer, schedule, max_epochs=self.trainer.max_epochs, total_steps=total_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _log_losses(
        self, stage: str, losses: dict[str, torch.Tensor], batch_size: int, on_step: bool
    ) -> None:
        for name, value in losses.items():
            main_term = name == "loss"
            self.log(
                f"{stage}/{name}",
                value.detach(),
                batch_size=batch_size,
                on_step=on_step,
                on_epoch=True,
                prog_bar=main_term,
                sync_dist=stage == "val",
            )

    def _validation_ground_truth(self):
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "validation_ground_truth"):
            raise ConfigError(
                "Validation needs the COCO ground truth of the validation set: pass a detrlab data module "
                "(trainer.fit(model, datamodule=...)), or one with a validation_ground_truth() method "
                "returning (pycocotools COCO, label_to_category_id)."
            )
        return datamodule.validation_ground_truth()


def dataset_to_model_labels(dataset_category_ids: list[int], model_category_ids: list[int]) -> torch.Tensor:
    """``[num_dataset_labels]`` int64: the detector class index of each contiguous dataset label.

    Raises:
        ValueError: a dataset category the detector has no class for, named with the fix.
    """
    index_of = {int(category): index for index, category in enumerate(model_category_ids)}
    missing = [int(c) for c in dataset_category_ids if int(c) not in index_of]
    if missing:
        raise ValueError(
            f"The dataset has category ids {missing[:10]} that the model's label_to_category_id does not "
            "cover, so its losses and AP would be meaningless. Evaluate on a dataset with the model's "
            "categories, or fine-tune with `init_from=` to re-initialise the class heads."
        )
    return torch.tensor([index_of[int(c)] for c in dataset_category_ids], dtype=torch.long)


def check_shared_value(key: str, value: int | None, parts: dict[str, nn.Module]) -> None:
    """Raise :class:`ConfigError` when a part's ``key`` attribute differs from the model-level ``value``."""
    if value is None:
        return
    for name, part in parts.items():
        own = getattr(part, key, None)
        if own is not None and int(own) != int(value):
            raise ConfigError(
                f"model.{name} has {key}={own} but model.{key}={value}: the parts share this value, so set "
                f"model.{key} once (the model configs reference it from both parts)."
            )
