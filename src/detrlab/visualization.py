"""Draw detections on images (torchvision ``draw_bounding_boxes``) for prediction and logging."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from detrlab.data.transforms import denormalize

#: Colours of the validation renderings: ground truth vs prediction.
GROUND_TRUTH_COLOR = (0, 220, 0)
PREDICTION_COLOR = (255, 40, 40)


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """One saturated RGB colour per class, hues spread by the golden ratio (neighbours differ)."""
    colors = []
    for label in range(num_classes):
        hue = (label * 0.618033988749895) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def box_captions(labels: Tensor, class_names: Sequence[str], scores: Tensor | None = None) -> list[str]:
    """``"<class name> <score>"`` per box (``"<class name>"`` without scores)."""
    names = [
        class_names[int(label)] if 0 <= int(label) < len(class_names) else str(int(label)) for label in labels
    ]
    if scores is None:
        return names
    return [f"{name} {float(score):.2f}" for name, score in zip(names, scores)]


def draw_boxes(
    image: Tensor,
    boxes: Tensor,
    captions: Sequence[str] | None,
    colors: list[tuple[int, int, int]] | tuple[int, int, int],
    width: int = 2,
) -> Tensor:
    """Draw ``boxes`` on a copy of ``image``.

    Args:
        image: uint8 ``[3, H, W]``.
        boxes: ``[N, 4]`` absolute xyxy pixels; clipped to the image before drawing.
        captions: ``N`` strings written inside each box's top-left corner, or None.
        colors: one RGB colour for all boxes, or one per box.
        width: line width in pixels.

    Returns:
        uint8 ``[3, H, W]`` (``image`` itself is unchanged; with no box, a copy of it).
    """
    if boxes.numel() == 0:
        return image.clone()
    height, width_px = image.shape[-2:]
    boxes = boxes.detach().float().cpu().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width_px - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    return draw_bounding_boxes(
        image.cpu(),
        boxes,
        labels=list(captions) if captions is not None else None,
        colors=colors,
        width=width,
        fill_labels=captions is not None,
    )


def draw_predictions(
    image: Tensor,
    prediction: dict[str, Tensor],
    class_names: Sequence[str],
    score_threshold: float = 0.3,
    width: int = 2,
) -> Tensor:
    """Draw the detections scoring at least ``score_threshold``, coloured by class.

    Args:
        image: uint8 ``[3, H, W]``.
        prediction: ``scores`` ``[K]``, ``labels`` int64 ``[K]``, ``boxes`` ``[K, 4]`` xyxy pixels of ``image``.
        class_names: name of each contiguous label.
    """
    # Ascending score: the most confident boxes are drawn last, on top.
    order = prediction["scores"].argsort()
    keep = order[prediction["scores"][order] >= score_threshold]
    labels = prediction["labels"][keep]
    palette = class_colors(len(class_names))
    colors = [palette[int(label)] if int(label) < len(palette) else PREDICTION_COLOR for label in labels]
    captions = box_captions(labels, class_names, prediction["scores"][keep])
    return draw_boxes(image, prediction["boxes"][keep], captions, colors, width=width)


def draw_ground_truth_and_predictions(
    image: Tensor,
    target_boxes: Tensor,
    target_labels: Tensor,
    prediction: dict[str, Tensor],
    class_names: Sequence[str],
    score_threshold: float = 0.3,
) -> Tensor:
    """Ground truth in green (class names), predictions above the threshold in red (name and score).

    All boxes are absolute xyxy pixels of ``image`` (uint8 ``[3, H, W]``).
    """
    drawn = draw_boxes(image, target_boxes, box_captions(target_labels, class_names), GROUND_TRUTH_COLOR)
    keep = prediction["scores"] >= score_threshold
    captions = box_captions(prediction["labels"][keep], class_names, prediction["scores"][keep])
    return draw_boxes(drawn, prediction["boxes"][keep], captions, PREDICTION_COLOR)


def to_uint8_image(normalized: Tensor, height: int, width: int) -> Tensor:
    """An ImageNet-normalized ``[3, Hpad, Wpad]`` batch entry -> uint8 ``[3, height, width]`` (padding cut)."""
    image = denormalize(normalized[:, :height, :width].detach().float().cpu())
    return (image * 255).round().to(torch.uint8)
