"""COCO-format detection dataset returning torchvision ``tv_tensors``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors

from detrlab.data.image_loading import BAD_IMAGE_POLICIES, decode_rgb
from detrlab.data.validation import ValidationReport, read_annotation_json, validate_coco
from detrlab.errors import ConfigError, CorruptImageError, DatasetNotFoundError

log = logging.getLogger(__name__)

Target = dict[str, Any]


def read_category_ids(annotation_file: str | os.PathLike) -> list[int]:
    """Sorted category ids of a COCO-format JSON (label ``i`` of the dataset is category ``ids[i]``)."""
    path = Path(annotation_file)
    if not path.is_file():
        raise DatasetNotFoundError(f"COCO annotation file not found: '{path}'.")
    with path.open() as f:
        categories = json.load(f).get("categories")
    if not categories:
        raise DatasetNotFoundError(
            f"'{path}' has no `categories` list: a COCO-format annotation file must define its categories."
        )
    return sorted({int(category["id"]) for category in categories})


class CocoDetection(Dataset):
    """Images and box annotations from a COCO-format JSON file.

    Category ids are mapped to contiguous labels ``0..num_classes-1`` in sorted id order; the maps are kept
    in ``label_to_category_id`` (list, label -> id) and ``category_id_to_label`` (dict, id -> label) so that
    predictions can be written back in the dataset's own ids.

    ``dataset[i]`` returns ``(image, target)`` where, before ``transforms``:

    - ``image``: ``tv_tensors.Image`` uint8 [3, H, W] (grayscale / RGBA / CMYK files converted to RGB),
    - ``target["boxes"]``: ``tv_tensors.BoundingBoxes`` float32 [N, 4], XYXY absolute pixels, canvas (H, W),
    - ``target["labels"]``: int64 [N] contiguous labels,
    - ``target["image_id"]``: int64 scalar tensor (the COCO image id),
    - ``target["orig_size"]``: int64 [2] = (H, W) of the image file.

    Crowd annotations are excluded, boxes are clipped to the image, and boxes with no width or height after
    clipping are dropped. Images without annotations are kept (with N = 0).

    Args:
        image_dir: folder holding the images (``file_name`` in the JSON is relative to it).
        annotation_file: COCO instances JSON.
        transforms: optional callable ``(image, target) -> (image, target)``.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transforms: Callable[[Any, Target], tuple[Any, Target]] | None = None,
        on_bad_annotation: str | None = None,
        validate_images: bool = False,
        on_bad_image: str = "error",
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"on_bad_image={on_bad_image!r}: choose one of {list(BAD_IMAGE_POLICIES)}.")
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise DatasetNotFoundError(
                f"COCO annotation file not found: '{self.annotation_file}'. Point the config at it, e.g. "
                "data.root=/path/to/coco, or data.train_annotations=... / data.val_annotations=..."
            )
        if not self.image_dir.is_dir():
            raise DatasetNotFoundError(
                f"Image folder not found: '{self.image_dir}'. Point the config at it, e.g. "
                "data.root=/path/to/coco, or data.train_images=... / data.val_images=..."
            )
        self.transforms = transforms
        self.on_bad_image = on_bad_image
        #: Samples replaced because their image could not be read (this process only: each
        #: DataLoader worker counts its own; every replacement is also logged).
        self.replaced_images = 0
        self.validation_report: ValidationReport | None = None

        # pycocotools prints progress messages; keep the console clean.
        with contextlib.redirect_stdout(io.StringIO()):
            if on_bad_annotation is None:
                self.coco = COCO(str(self.annotation_file))
            else:
                data, self.validation_report = validate_coco(
                    read_annotation_json(self.annotation_file),
                    self.annotation_file,
                    self.image_dir,
                    policy=on_bad_annotation,
                    check_images=validate_images,
                )
                self.coco = COCO()
                self.coco.dataset = data
                self.coco.createIndex()

        self.label_to_category_id: list[int] = sorted(self.coco.getCatIds())
        self.category_id_to_label: dict[int, int] = {
            cat_id: label for label, cat_id in enumerate(self.label_to_category_id)
        }
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in self.label_to_category_id]
        self.ids: list[int] = sorted(self.coco.imgs.keys())

    @property
    def num_classes(self) -> int:
        """Number of categories in the annotation file."""
        return len(self.label_to_category_id)

    def __len__(self) -> int:
        return len(self.ids)

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` as recorded in the JSON (no decoding)."""
        info = self.coco.imgs[self.ids[index]]
        return int(info["height"]), int(info["width"])

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, in dataset order, read from the JSON."""
        ratios = []
        for index in range(len(self)):
            h, w = self.get_height_and_width(index)
            ratios.append(w / h)
        return ratios

    def load_image(self, index: int) -> tv_tensors.Image:
        """Decode image ``index`` as RGB uint8 [3, H, W]."""
        path = self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]
        if not path.is_file():
            raise DatasetNotFoundError(
                f"Image '{path}' listed in '{self.annotation_file}' does not exist; check that the image folder "
                "matches the annotation file (data.train_images / data.val_images)."
            )
        return decode_rgb(path)

    def load_target(self, index: int, height: int, width: int) -> Target:
        """Target dict (keys ``boxes``, ``labels``, ``image_id``, ``orig_size``) for an image of size (H, W)."""
        image_id = self.ids[index]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        labels = torch.tensor([self.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
            "labels": labels[keep],
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image, loaded = self._load_readable_image(index)
        height, width = image.shape[-2:]
        target = self.load_target(loaded, height, width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if loaded != index:
            # Counted in the main process (CocoDataModule.on_after_batch_transfer): workers' own
            # counters are not visible there.
            target["replaced_image"] = torch.tensor(True)
        return image, target

    def _load_readable_image(self, index: int) -> tuple[tv_tensors.Image, int]:
        """Image ``index``, or with ``on_bad_image="skip"`` the next readable one (wrapping around).

        The replacement is deterministic (the next index), so seeded runs stay reproducible.
        """
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                return self.load_image(candidate), candidate
            except (CorruptImageError, DatasetNotFoundError) as error:
                if self.on_bad_image == "error":
                    raise
                self.replaced_images += 1
                log.warning("Replacing sample %d (data.on_bad_image=skip): %s", candidate, error)
        raise CorruptImageError(
            f"None of the {len(self)} images listed in '{self.annotation_file}' can be read from "
            f"'{self.image_dir}'; check the image folder."
        )
