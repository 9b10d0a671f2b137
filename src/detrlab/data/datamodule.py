"""Lightning data modules: any COCO-format dataset, and the generated synthetic shapes dataset."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, RandomSampler

from detrlab.data.coco import CocoDetection
from detrlab.data.collate import Batch, collate_detection
from detrlab.data.image_loading import BAD_IMAGE_POLICIES
from detrlab.data.loader import DetectionDataLoader
from detrlab.data.samplers import GroupedBatchSampler, aspect_ratio_groups
from detrlab.data.synthetic import SHAPE_NAMES, generate_shapes_dataset
from detrlab.data.transforms import eval_transforms, train_transforms
from detrlab.errors import ConfigError, DatasetValidationError

log = logging.getLogger(__name__)

#: Where each split lives under a COCO 2017 ``root`` (used for paths that are not given explicitly).
COCO2017_LAYOUT = {
    "train_images": "train2017",
    "train_annotations": "annotations/instances_train2017.json",
    "val_images": "val2017",
    "val_annotations": "annotations/instances_val2017.json",
}


class CocoDataModule(L.LightningDataModule):
    """Train / val dataloaders over COCO-format data.

    Batches are :class:`detrlab.data.collate.Batch` (``images`` [B, 3, H, W] normalized and zero-padded,
    ``mask`` [B, H, W] True on padding, ``targets`` list of dicts; see :mod:`detrlab.data.transforms`).

    Args:
        train_images, train_annotations: training image folder and COCO JSON.
        val_images, val_annotations: validation image folder and COCO JSON.
        num_classes: expected number of categories; checked against the annotation files when given.
        batch_size: training batch size (per device).
        val_batch_size: validation batch size; defaults to ``batch_size``.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory, so that their copies to the GPU run
            asynchronously (``non_blocking``); ``None`` (default): pin when the attached trainer's
            accelerator is a CUDA GPU, not otherwise.
        persistent_workers: keep workers alive between epochs (only used when ``num_workers > 0``).
        train_scales: shorter-side sizes sampled in training.
        max_size: cap on the longer side in training.
        crop_scales: shorter-side sizes before the random crop; ``None`` disables the crop branch.
        crop_size: (min, max) side length of the random crop.
        eval_size, eval_max_size: shorter-side size and longer-side cap for validation.
        aspect_ratio_grouping: batch landscape and portrait images separately (less padding).
        size_divisibility: pad batches to a multiple of this many pixels.
        on_bad_annotation: "strict" (default: an annotation file with problems stops the run with a report)
            or "skip" (bad images / annotations are dropped, counted and logged); see
            :mod:`detrlab.data.validation`.
        validate_images: at start-up also decode every image and compare its size with the JSON (slow).
        on_bad_image: an undecodable training image at run time: "error" (default) or "skip" (the sample
            is replaced by the next readable one; each replacement is logged and the running count
            is the metric ``data/replaced_images``). Validation images always raise; use
            ``validate_images`` with ``on_bad_annotation=skip`` to drop them up front.
        timeout: seconds a DataLoader waits for a batch from a worker before failing (only with
            ``num_workers > 0``; 0 waits forever; default 600). A crashed worker is reported by the
            DataLoader itself; the timeout also ends a worker that hangs.
        root: dataset folder; any of the four paths above left unset follows the COCO 2017 layout under it
            (``train2017/``, ``val2017/``, ``annotations/instances_{train,val}2017.json``).
    """

    def __init__(
        self,
        train_images: str | os.PathLike | None = None,
        train_annotations: str | os.PathLike | None = None,
        val_images: str | os.PathLike | None = None,
        val_annotations: str | os.PathLike | None = None,
        num_classes: int | None = None,
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        train_scales: Sequence[int] = tuple(range(480, 801, 32)),
        max_size: int = 1333,
        crop_scales: Sequence[int] | None = (400, 500, 600),
        crop_size: Sequence[int] = (384, 600),
        eval_size: int = 800,
        eval_max_size: int = 1333,
        aspect_ratio_grouping: bool = False,
        size_divisibility: int = 1,
        on_bad_annotation: str = "strict",
        validate_images: bool = False,
        on_bad_image: str = "error",
        timeout: float = 600.0,
        root: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.root = None if root is None else Path(root)
        self.train_images = self._resolve(train_images, "train_images")
        self.train_annotations = self._resolve(train_annotations, "train_annotations")
        self.val_images = self._resolve(val_images, "val_images")
        self.val_annotations = self._resolve(val_annotations, "val_annotations")
        self.expected_num_classes = num_classes
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_scales = list(train_scales)
        self.max_size = max_size
        self.crop_scales = None if crop_scales is None else list(crop_scales)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.eval_size = eval_size
        self.eval_max_size = eval_max_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.size_divisibility = size_divisibility
        self.dataset_checks = {"on_bad_annotation": on_bad_annotation, "validate_images": validate_images}
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(
                f"data.on_bad_image={on_bad_image!r}: choose one of {list(BAD_IMAGE_POLICIES)}."
            )
        self.on_bad_image = on_bad_image
        if float(timeout) < 0:
            raise ConfigError(f"data.timeout={timeout} must be >= 0 seconds (0 waits forever).")
        self.timeout = float(timeout)
        #: Training samples replaced because their image could not be read, over all workers.
        self.replaced_images = 0
        self._train_dataset: CocoDetection | None = None
        self._val_dataset: CocoDetection | None = None

    def _resolve(self, path: str | os.PathLike | None, key: str) -> Path:
        if path is not None:
            return Path(path)
        if self.root is None:
            raise ConfigError(f"No path for data.{key}: set data.{key}=... or data.root=/path/to/coco.")
        return self.root / COCO2017_LAYOUT[key]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets: both for ``fit`` (or ``None``), only validation for other stages."""
        if self._val_dataset is None:
            self._val_dataset = self._check_num_classes(
                CocoDetection(
                    self.val_images, self.val_annotations, self.eval_transform(), **self.dataset_checks
                )
            )
        if stage in (None, "fit") and self._train_dataset is None:
            transforms = train_transforms(self.train_scales, self.max_size, self.crop_scales, self.crop_size)
            self._train_dataset = self._check_num_classes(
                CocoDetection(
                    self.train_images,
                    self.train_annotations,
                    transforms,
                    on_bad_image=self.on_bad_image,
                    **self.dataset_checks,
                )
            )
            if self._train_dataset.label_to_category_id != self._val_dataset.label_to_category_id:
                raise DatasetValidationError(
                    f"Train annotations '{self.train_annotations}' and val annotations '{self.val_annotations}' "
                    f"have different category ids ({self._train_dataset.label_to_category_id} vs "
                    f"{self._val_dataset.label_to_category_id}); use annotation files with the same categories."
                )

    def eval_transform(self):
        """The deterministic evaluation transform (shorter side ``eval_size``, longer side capped)."""
        return eval_transforms(self.eval_size, self.eval_max_size)

    def _check_num_classes(self, dataset: CocoDetection) -> CocoDetection:
        expected = self.expected_num_classes
        if expected is not None and expected != dataset.num_classes:
            raise ConfigError(
                f"data.num_classes={expected} is configured, but '{dataset.annotation_file}' has "
                f"{dataset.num_classes} categories. Set data.num_classes={dataset.num_classes} "
                "(and the model's num_classes to the same value)."
            )
        return dataset

    @property
    def train_dataset(self) -> CocoDetection:
        """Training dataset; built by ``setup("fit")``."""
        if self._train_dataset is None:
            raise RuntimeError("The training dataset is not built yet: call setup('fit') first.")
        return self._train_dataset

    @property
    def val_dataset(self) -> CocoDetection:
        """Validation dataset; built by ``setup()`` (any stage), or on first access."""
        if self._val_dataset is None:
            self.setup("validate")
        return self._val_dataset

    @property
    def num_classes(self) -> int:
        """Number of categories (read from the validation annotations)."""
        return self.val_dataset.num_classes

    @property
    def class_names(self) -> list[str]:
        """Category names in label order."""
        return self.val_dataset.class_names

    @property
    def label_to_category_id(self) -> list[int]:
        """Dataset category id of each contiguous label."""
        return self.val_dataset.label_to_category_id

    def validation_ground_truth(self) -> tuple[Any, list[int]]:
        """What validation scores predictions against: the validation split's ``pycocotools.coco.COCO``
        and ``label_to_category_id`` (the category id of each contiguous label)."""
        return self.val_dataset.coco, self.val_dataset.label_to_category_id

    def pins_memory(self) -> bool:
        """Whether the loaders pin their batches: ``pin_memory``, or when ``None`` whether the trainer
        this data module is attached to runs on a CUDA GPU."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = getattr(self, "trainer", None)
        root_device = getattr(getattr(trainer, "strategy", None), "root_device", None)
        return root_device is not None and root_device.type == "cuda"

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pins_memory(),
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
            "collate_fn": functools.partial(collate_detection, size_divisibility=self.size_divisibility),
            "timeout": self.timeout if self.num_workers > 0 else 0.0,
        }

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        if self.aspect_ratio_grouping:
            # Created inside the hook so Lightning can re-create it with a DistributedSampler.
            batch_sampler = GroupedBatchSampler(
                RandomSampler(dataset), aspect_ratio_groups(dataset.aspect_ratios()), self.batch_size
            )
            return DetectionDataLoader(dataset, batch_sampler=batch_sampler, **self._loader_kwargs())
        return DetectionDataLoader(
            dataset, batch_size=self.batch_size, shuffle=True, drop_last=False, **self._loader_kwargs()
        )

    def val_dataloader(self) -> DataLoader:
        return DetectionDataLoader(
            self.val_dataset, batch_size=self.val_batch_size, shuffle=False, **self._loader_kwargs()
        )

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Count the training samples whose unreadable image was replaced (``data.on_bad_image=skip``).

        The count is logged (a warning per batch with replacements) and sent to every logger as
        ``data/replaced_images`` (the run's running total), at the step where it changed.
        """
        replaced = sum(bool(t.get("replaced_image", False)) for t in getattr(batch, "targets", []))
        trainer = getattr(self, "trainer", None)
        if replaced and trainer is not None and trainer.training:
            self.replaced_images += replaced
            log.warning(
                "%d unreadable training image(s) replaced in this batch, %d in this run so far "
                "(data.on_bad_image=skip)",
                replaced,
                self.replaced_images,
            )
            for logger in trainer.loggers:
                logger.log_metrics(
                    {"data/replaced_images": float(self.replaced_images)}, step=trainer.global_step
                )
        return batch


def _scaled(image_size: int, fractions: Sequence[float]) -> list[int]:
    return [round(image_size * f) for f in fractions]


class SyntheticDataModule(CocoDataModule):
    """:class:`CocoDataModule` over the generated shapes dataset (see :mod:`detrlab.data.synthetic`).

    ``prepare_data`` generates the dataset under ``root`` (a no-op when it already exists with the same
    parameters). Image paths are derived from ``root``. Unless given in ``kwargs``, the augmentation sizes
    scale with ``image_size`` the way the COCO defaults relate to 800 px: train scales 0.75x..1.25x, crop
    scales 0.5x..0.75x, crop sides 0.48x..0.75x, longer side capped at 5/3 x, evaluation at 1x.
    ``num_classes`` defaults to the number of shapes.

    Args:
        root: dataset folder.
        num_train, num_val, image_size, max_objects, seed: generation parameters.
        **kwargs: any other :class:`CocoDataModule` argument.
    """

    def __init__(
        self,
        root: str | os.PathLike = "data/synthetic_shapes",
        num_train: int = 2000,
        num_val: int = 200,
        image_size: int = 256,
        max_objects: int = 8,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        root = Path(root)
        kwargs.setdefault("num_classes", len(SHAPE_NAMES))
        kwargs.setdefault("train_scales", _scaled(image_size, (0.75, 0.875, 1.0, 1.125, 1.25)))
        kwargs.setdefault("max_size", round(image_size * 5 / 3))
        kwargs.setdefault("crop_scales", _scaled(image_size, (0.5, 0.625, 0.75)))
        kwargs.setdefault("crop_size", _scaled(image_size, (0.48, 0.75)))
        kwargs.setdefault("eval_size", image_size)
        kwargs.setdefault("eval_max_size", round(image_size * 5 / 3))
        super().__init__(
            train_images=root / "train",
            train_annotations=root / "annotations" / "train.json",
            val_images=root / "val",
            val_annotations=root / "annotations" / "val.json",
            root=root,
            **kwargs,
        )
        self.num_train = num_train
        self.num_val = num_val
        self.image_size = image_size
        self.max_objects = max_objects
        self.seed = seed

    def prepare_data(self) -> None:
        """Generate the dataset if missing or made with other parameters (runs on one process)."""
        generate_shapes_dataset(
            self.root,
            num_train=self.num_train,
            num_val=self.num_val,
            image_size=self.image_size,
            max_objects=self.max_objects,
            seed=self.seed,
        )
