"""Prediction run: detect objects in image files with a trained checkpoint.

Writes a COCO-style results JSON and, for every input image, a PNG with the detections drawn
(boxes, class names and scores).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import write_png

from detrlab.builders import build_datamodule, resolve_num_classes
from detrlab.checkpoint import fill_from_checkpoint, load_checkpoint, model_from_checkpoint, stored_classes
from detrlab.data.collate import collate_detection
from detrlab.data.image_loading import decode_rgb
from detrlab.errors import ConfigError, DatasetNotFoundError
from detrlab.utils.boxes import xyxy_to_xywh
from detrlab.utils.tf32 import apply_tf32
from detrlab.visualization import draw_predictions

log = logging.getLogger(__name__)

#: File types read from an input folder (what :func:`~detrlab.data.image_loading.decode_rgb` decodes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def find_images(input_path: str | Path) -> tuple[Path, list[Path]]:
    """The image files to predict on: ``input_path`` itself, or the images below a folder (sorted).

    Returns:
        The folder that output names are made relative to, and the image paths.
    """
    path = Path(str(input_path)).expanduser()
    if path.is_file():
        return path.parent, [path]
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"input={input_path} does not exist: pass an image file or a folder of images."
        )
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetNotFoundError(
            f"input={input_path} holds no images (looked for {', '.join(IMAGE_SUFFIXES)} files, also in subfolders)."
        )
    return path, files


class ImageFiles(Dataset):
    """Image files with an evaluation transform, shaped like detection samples.

    ``dataset[i]`` is ``(image [3, H', W'] normalized, target)`` with ``image_id`` = ``i``,
    ``orig_size`` (H, W) of the file, ``size`` (H', W') and empty ``boxes`` / ``labels``.
    """

    def __init__(self, files: list[Path], transform: Callable[[Any, dict], tuple[Any, dict]]) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = decode_rgb(self.files[index])
        height, width = image.shape[-2:]
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)),
            "labels": torch.zeros(0, dtype=torch.int64),
            "image_id": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }
        return self.transform(image, target)


def output_names(root: Path, files: list[Path]) -> list[Path]:
    """PNG name of each rendered image: its path relative to ``root`` with a ``.png`` suffix."""
    names = [file.relative_to(root).with_suffix(".png") for file in files]
    seen: dict[Path, Path] = {}
    for name, file in zip(names, files):
        if name in seen:
            raise ConfigError(
                f"'{seen[name]}' and '{file}' would both be drawn to '{name}': rename one of them, "
                "or predict on them separately."
            )
        seen[name] = file
    return names


def prediction_trainer(device: str) -> L.Trainer:
    """A one-device Lightning trainer for ``trainer.predict`` on ``device`` ("auto", "cpu", "cuda", "cuda:1")."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"device={device} is not a device: use auto, cpu, cuda or cuda:<index>.")
    devices = [int(index or 0)] if kind == "cuda" else 1
    return L.Trainer(
        accelerator="gpu" if kind == "cuda" else "cpu",
        devices=devices,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Detect objects in ``cfg.input`` (an image file or a folder) with ``cfg.ckpt_path``.

    Images are resized with the evaluation transform of the checkpoint's data config; boxes are
    reported in the pixels of the original files. Detections scoring below ``cfg.score_threshold``
    are dropped.

    Writes:
        ``cfg.results_file``: COCO results JSON, a list of ``image_id`` (position of the file in the
        sorted input list), ``file_name`` (relative to the input folder), ``category_id`` (the
        training dataset's id), ``category_name``, ``bbox`` (x, y, w, h pixels) and ``score``.
        ``cfg.image_dir``: one PNG per input with the detections drawn (unless ``draw=false``).

    Returns:
        ``images`` (count), ``detections`` (count), ``results_file`` and ``image_dir`` (paths).
    """
    checkpoint = load_checkpoint(cfg.ckpt_path)
    fill_from_checkpoint(cfg, checkpoint)
    resolve_num_classes(cfg.data)
    apply_tf32(cfg.get("tf32"))
    averaged = cfg.get("use_averaged_weights", True)
    model = model_from_checkpoint(cfg.model, checkpoint, use_averaged=averaged)
    datamodule = build_datamodule(cfg.data)
    if not hasattr(datamodule, "eval_transform"):
        raise ConfigError(
            f"data._target_ builds a {type(datamodule).__name__}, which has no eval_transform(): "
            "predict.py needs a detrlab COCO data module to know the evaluation image size."
        )
    classes = stored_classes(checkpoint)
    # Checkpoints without stored classes: read them from the data config's annotation file.
    class_names, label_to_category_id = classes or (datamodule.class_names, datamodule.label_to_category_id)

    root, files = find_images(cfg.input)
    names = output_names(root, files)
    loader = DataLoader(
        ImageFiles(files, datamodule.eval_transform()),
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        collate_fn=collate_detection,
    )
    image_dir = Path(cfg.image_dir) if cfg.get("draw", True) else None
    threshold = float(cfg.score_threshold)
    results: list[dict[str, Any]] = []
    trainer = prediction_trainer(cfg.get("device", "auto"))
    batches = trainer.predict(model, dataloaders=loader)
    for prediction in (p for batch in batches for p in batch):
        index = int(prediction["image_id"])
        keep = prediction["scores"] >= threshold
        kept = {
            "scores": prediction["scores"][keep].float().cpu(),
            "labels": prediction["labels"][keep].cpu(),
            "boxes": prediction["boxes"][keep].float().cpu(),
        }
        file_name = files[index].relative_to(root).as_posix()
        results.extend(_to_results(index, file_name, kept, class_names, label_to_category_id))
        if image_dir is not None:
            drawn = draw_predictions(decode_rgb(files[index]), kept, class_names, score_threshold=threshold)
            out = image_dir / names[index]
            out.parent.mkdir(parents=True, exist_ok=True)
            write_png(drawn, str(out))

    results_file = Path(cfg.results_file)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results))
    log.info("%d detections in %d images written to %s", len(results), len(files), results_file)
    if image_dir is not None:
        log.info("Images with the detections drawn: %s", image_dir)
    return {
        "images": len(files),
        "detections": len(results),
        "results_file": str(results_file),
        "image_dir": None if image_dir is None else str(image_dir),
    }


def _to_results(
    image_id: int,
    file_name: str,
    prediction: dict[str, torch.Tensor],
    class_names: list[str],
    label_to_category_id: list[int],
) -> list[dict[str, Any]]:
    boxes = xyxy_to_xywh(prediction["boxes"].double()).tolist()
    return [
        {
            "image_id": image_id,
            "file_name": file_name,
            "category_id": label_to_category_id[int(label)],
            "category_name": class_names[int(label)],
            "bbox": [round(v, 2) for v in box],
            "score": round(float(score), 5),
        }
        for box, label, score in zip(boxes, prediction["labels"], prediction["scores"])
    ]
