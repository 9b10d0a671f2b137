"""Write an imported detector as a detrlab checkpoint that ``eval.py``, ``predict.py`` and
``train.py init_from=`` accept."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import hydra
import torch

from detrlab.callbacks.config_in_checkpoint import CHECKPOINT_CONFIG_KEY
from detrlab.convert.detector_config import ConvertedModel
from detrlab.convert.loader import convert_checkpoint

__all__ = ["converted_model_config", "write_detrlab_checkpoint"]


def converted_model_config(converted: ConvertedModel) -> dict[str, Any]:
    """The ``DetectionModule`` config of an import, with the label map of raw-COCO-id models.

    91-logit models index COCO categories by their raw ids; ``label_to_category_id`` (the identity)
    makes evaluation and prediction report those ids, whatever the dataset's contiguous labels are.
    """
    config = copy.deepcopy(converted.model_config)
    if converted.label_to_category_id is not None:
        config["label_to_category_id"] = list(converted.label_to_category_id)
    return config


def write_detrlab_checkpoint(source: str | Path, output: str | Path, **overrides: Any) -> ConvertedModel:
    """Convert ``source`` (see :func:`detrlab.convert.convert_checkpoint`) and save it to ``output``.

    The file holds ``state_dict`` (the ``DetectionModule``'s: detector weights plus the criterion's
    buffers) and, under ``detrlab_config``, the ``model`` config, ``class_names`` and
    ``label_to_category_id`` (what each class index means), as a training run's checkpoints do.
    It has no ``data`` config: ``eval.py`` then needs ``data=...`` on the command line.
    """
    detector, converted = convert_checkpoint(source, **overrides)
    model_config = converted_model_config(converted)
    module_config = {key: value for key, value in model_config.items() if key != "detector"}
    module = hydra.utils.instantiate(module_config, detector=detector, _convert_="all")
    num_classes = int(converted.detector_config["num_classes"])
    category_ids = converted.label_to_category_id or list(range(num_classes))
    class_names = converted.class_names or [str(category) for category in category_ids]
    output = Path(output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            CHECKPOINT_CONFIG_KEY: {
                "model": model_config,
                "class_names": class_names,
                "label_to_category_id": category_ids,
            },
            "detrlab_converted_from": converted.source,
            "detrlab_conversion_notes": list(converted.notes),
        },
        output,
    )
    return converted
