"""Log a few validation images with ground-truth and predicted boxes to the run's loggers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from torchvision.io import write_png

from detrlab.utils.boxes import normalized_cxcywh_to_absolute_xyxy
from detrlab.visualization import draw_ground_truth_and_predictions, to_uint8_image


class LogDetections(L.Callback):
    """Renders the first ``num_images`` images of each validation epoch's first batch.

    Ground truth is drawn in green, predictions scoring at least ``score_threshold`` in red with
    class name and score, at the validation resolution. The images go to every logger that can
    take them: TensorBoard (``add_image``, tag ``val/detections/<i>``), Weights & Biases
    (``log_image``, key ``val/detections``) and CSV (PNG files in ``<log dir>/val_images/``).
    Other loggers are skipped; with none of these, nothing is computed.

    Runs on global rank 0 only and re-runs the detector on those few images (a negligible cost
    next to the epoch), so the :class:`~detrlab.module.DetectionModule` keeps no rendering state.

    Args:
        num_images: images rendered per validation epoch (at most the first batch's size).
        score_threshold: predictions below this score are not drawn.
    """

    def __init__(self, num_images: int = 4, score_threshold: float = 0.3) -> None:
        if num_images < 1:
            raise ValueError(f"LogDetections: num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.score_threshold = score_threshold

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        loggers = [logger for logger in trainer.loggers if _accepts_images(logger)]
        if not loggers:
            return
        images = self.render(pl_module, batch, _class_names(trainer, pl_module))
        for logger in loggers:
            _send(logger, images, trainer.current_epoch, trainer.global_step)

    @torch.no_grad()
    def render(self, pl_module: L.LightningModule, batch: Any, class_names: list[str]) -> list[torch.Tensor]:
        """uint8 ``[3, h, w]`` renderings of the first images of ``batch`` (a :class:`Batch`)."""
        count = min(self.num_images, len(batch))
        sizes = torch.stack([t["size"] for t in batch.targets[:count]])
        # Boxes in the pixels of the resized (validation-size) images that are drawn on.
        predictions = pl_module.predict(batch.images[:count], batch.mask[:count], sizes)
        rendered = []
        for i in range(count):
            target = batch.targets[i]
            height, width = (int(v) for v in target["size"])
            image = to_uint8_image(batch.images[i], height, width)
            target_boxes = normalized_cxcywh_to_absolute_xyxy(
                target["boxes"].float().cpu(), target["size"].cpu()
            )
            prediction = {key: value.detach().float().cpu() for key, value in predictions[i].items()}
            prediction["labels"] = predictions[i]["labels"].cpu()
            rendered.append(
                draw_ground_truth_and_predictions(
                    image, target_boxes, target["labels"].cpu(), prediction, class_names, self.score_threshold
                )
            )
        return rendered


def _accepts_images(logger: Logger) -> bool:
    return isinstance(logger, (TensorBoardLogger, WandbLogger, CSVLogger))


def _class_names(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
    names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
    if names is not None:
        return list(names)
    return [str(label) for label in range(pl_module.num_classes)]


def _send(logger: Logger, images: list[torch.Tensor], epoch: int, step: int) -> None:
    if isinstance(logger, TensorBoardLogger):
        for i, image in enumerate(images):
            logger.experiment.add_image(f"val/detections/{i}", image, global_step=step, dataformats="CHW")
    elif isinstance(logger, WandbLogger):
        logger.log_image(
            key="val/detections", images=[image.permute(1, 2, 0).numpy() for image in images], step=step
        )
    elif isinstance(logger, CSVLogger):
        folder = Path(logger.log_dir) / "val_images"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            write_png(image, str(folder / f"epoch_{epoch:03d}_{i}.png"))
