"""What a conversion produces besides weights: our model config, the class-id map and the assumptions made.

The configs are plain dicts in the shape of ``conf/model/*.yaml`` (``DetectionModule`` with
``detector``, ``criterion``, ``postprocess``, ``optim``), so ``hydra.utils.instantiate`` builds them
and a converted checkpoint can store them for ``eval.py`` and ``train.py``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import hydra
from torch import nn

from detrlab.models.backbone import TORCHVISION_RESNETS
from detrlab.models.deformable_detr import DETA

__all__ = [
    "COCO_RAW_NUM_CLASSES",
    "ConvertedModel",
    "deformable_module_config",
    "detr_module_config",
    "raw_coco_label_map",
    "resnet_backbone_config",
    "swin_backbone_config",
]

#: Class count of detectors that index COCO categories by their raw ids (1..90, with gaps, + 0).
COCO_RAW_NUM_CLASSES = 91

# Standard ResNets by (block type, stem width, stage widths, depths): imported under their
# torchvision name so that the config reads like ours; anything else is ``resnet_custom``.
_STANDARD_RESNETS = {
    ("basic", 64, (64, 128, 256, 512), (2, 2, 2, 2)): "resnet18",
    ("basic", 64, (64, 128, 256, 512), (3, 4, 6, 3)): "resnet34",
    ("bottleneck", 64, (256, 512, 1024, 2048), (3, 4, 6, 3)): "resnet50",
    ("bottleneck", 64, (256, 512, 1024, 2048), (3, 4, 23, 3)): "resnet101",
    ("bottleneck", 64, (256, 512, 1024, 2048), (3, 8, 36, 3)): "resnet152",
}


@dataclass
class ConvertedModel:
    """The model a foreign checkpoint describes.

    Attributes:
        family: ``"detr"``, ``"deformable_detr"`` or ``"deta"``.
        model_config: ``DetectionModule`` config dict (``_target_``, ``detector``, ``criterion``,
            ``postprocess``, ``optim``).
        source: where it came from (path and format), for messages.
        notes: hyper-parameters that were not recorded in the checkpoint and were assumed.
        class_names: the name of each class index when the checkpoint records them
            (transformers' ``id2label``), else ``None``.
    """

    family: str
    model_config: dict[str, Any]
    source: str
    notes: list[str] = field(default_factory=list)
    class_names: list[str] | None = None

    @property
    def detector_config(self) -> dict[str, Any]:
        return self.model_config["detector"]

    @property
    def label_to_category_id(self) -> list[int] | None:
        """Identity 0..90 for 91-class models (class index = COCO category id), else ``None``."""
        return raw_coco_label_map(self.detector_config["num_classes"])

    def build_detector(self) -> nn.Module:
        """Instantiate the detector (random weights)."""
        return hydra.utils.instantiate(copy.deepcopy(self.detector_config), _convert_="all")

    def apply_overrides(self, overrides: dict[str, Any]) -> None:
        """Update detector arguments (``backbone`` may be a dict merged into the backbone config)."""
        for key, value in overrides.items():
            if key == "backbone" and isinstance(value, dict):
                self.detector_config["backbone"].update(value)
            else:
                self.detector_config[key] = value
        # The values detector and criterion share follow the detector.
        if "num_classes" in overrides:
            self.model_config["num_classes"] = overrides["num_classes"]
            self.model_config["criterion"]["classification"]["num_classes"] = overrides["num_classes"]
        if "num_queries" in overrides:
            self.model_config["num_queries"] = overrides["num_queries"]
            stage2 = self.model_config["criterion"]["assignment"].get("stage2_assigner")
            if stage2 is not None:
                stage2["num_queries"] = overrides["num_queries"]


def raw_coco_label_map(num_classes: int) -> list[int] | None:
    """Identity map for 91-logit models, whose class index *is* the COCO category id; else ``None``."""
    return list(range(num_classes)) if num_classes == COCO_RAW_NUM_CLASSES else None


def resnet_backbone_config(
    block_type: str,
    stem_width: int,
    stage_widths: list[int],
    stage_blocks: list[int],
    return_stages: list[int],
    dilation: bool = False,
) -> dict[str, Any]:
    """A ``ResNetBackbone`` config: a torchvision name when the widths are standard, else ``resnet_custom``."""
    config: dict[str, Any] = {
        "_target_": "detrlab.models.backbone.ResNetBackbone",
        "pretrained": None,
        "trainable_stages": 3,
        "frozen_batchnorm": True,
        "dilation": dilation,
        "return_stages": list(return_stages),
    }
    standard = _STANDARD_RESNETS.get((block_type, stem_width, tuple(stage_widths), tuple(stage_blocks)))
    if standard is not None:
        config["name"] = standard
    else:
        config.update(
            name="resnet_custom",
            stem_width=stem_width,
            stage_widths=list(stage_widths),
            stage_blocks=list(stage_blocks),
            block_type=block_type,
        )
    return config


def named_resnet_config(name: str, return_stages: list[int], dilation: bool = False) -> dict[str, Any]:
    """A ``ResNetBackbone`` config for a torchvision ResNet name (timm and original checkpoints)."""
    if name not in TORCHVISION_RESNETS:
        raise ValueError(
            f"backbone {name!r} is not a ResNet we can build; supported: {list(TORCHVISION_RESNETS)}"
        )
    return {
        "_target_": "detrlab.models.backbone.ResNetBackbone",
        "name": name,
        "pretrained": None,
        "trainable_stages": 3,
        "frozen_batchnorm": True,
        "dilation": dilation,
        "return_stages": list(return_stages),
    }


def _matcher(
    class_cost: str, cost_class: float, cost_bbox: float, cost_giou: float, focal_alpha: float
) -> dict:
    return {
        "_target_": "detrlab.losses.matcher.HungarianMatcher",
        "class_cost": class_cost,
        "cost_class": float(cost_class),
        "cost_bbox": float(cost_bbox),
        "cost_giou": float(cost_giou),
        "focal_alpha": float(focal_alpha),
        "focal_gamma": 2.0,
    }


def detr_module_config(
    detector: dict[str, Any],
    costs: tuple[float, float, float],
    loss_weights: tuple[float, float, float],
    eos_coef: float,
    optim: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``DetectionModule`` config of a DETR (softmax classes, "no object" column)."""
    return _module_config(
        detector,
        loss_weights,
        classification={
            "_target_": "detrlab.losses.classification.SoftmaxCrossEntropy",
            "num_classes": detector["num_classes"],
            "eos_coef": float(eos_coef),
        },
        assignment={
            "_target_": "detrlab.losses.assignment.HungarianAssignment",
            "matcher": _matcher("softmax", *costs, focal_alpha=0.25),
        },
        postprocess={"_target_": "detrlab.evaluation.postprocess.DetrPostProcess"},
        optim=optim
        or {"lr": 1e-4, "lr_backbone": 1e-5, "weight_decay": 1e-4, "schedule": {"lr_drops": ["2/3"]}},
    )


def deformable_module_config(
    detector: dict[str, Any],
    costs: tuple[float, float, float],
    loss_weights: tuple[float, float, float],
    focal_alpha: float,
    assign_second_stage: bool,
    criterion_num_queries: int,
    optim: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``DetectionModule`` config of Deformable DETR / DETA (sigmoid focal classes).

    ``detector`` holds every :class:`~detrlab.models.deformable_detr.DeformableDETR` argument; it
    becomes a ``DETA`` when it has DETA's defining options (two-stage, refinement, proposal features).
    The encoder is IoU-assigned when the detector selects its proposals by NMS
    (``assign_first_stage``), the decoder with ``assign_second_stage`` (``criterion_num_queries``
    samples per image). DETA's one-to-many training produces duplicates, so its post-processing
    runs class-wise NMS (0.7 after a top-10000 preselection), as DETA does at inference.
    """
    detector = _deformable_detector(detector)
    postprocess: dict[str, Any] = {
        "_target_": "detrlab.evaluation.sigmoid_postprocess.SigmoidTopKPostProcess",
        "num_detections": 100,
        "nms_iou": 0.7 if assign_second_stage else None,
    }
    if assign_second_stage:
        postprocess["pre_nms_topk"] = 10000
    matcher = _matcher("focal", *costs, focal_alpha=focal_alpha)
    assign_first_stage = bool(detector.get("assign_first_stage", False))
    if assign_first_stage or assign_second_stage:
        assignment: dict[str, Any] = {
            "_target_": "detrlab.losses.assignment.DetaAssignment",
            "matcher": matcher,
            "stage1_assigner": {"_target_": "detrlab.losses.assigner.Stage1Assigner"}
            if assign_first_stage
            else None,
            "stage2_assigner": {
                "_target_": "detrlab.losses.assigner.Stage2Assigner",
                "num_queries": int(criterion_num_queries),
            }
            if assign_second_stage
            else None,
        }
    else:
        assignment = {"_target_": "detrlab.losses.assignment.HungarianAssignment", "matcher": matcher}
    return _module_config(
        detector,
        loss_weights,
        classification={
            "_target_": "detrlab.losses.classification.SigmoidFocalLoss",
            "num_classes": detector["num_classes"],
            "alpha": float(focal_alpha),
            "gamma": 2.0,
        },
        assignment=assignment,
        postprocess=postprocess,
        optim=optim
        or {
            "lr": 2e-4,
            "lr_backbone": 2e-5,
            "lr_linear_proj_mult": 0.1,
            "weight_decay": 1e-4,
            "schedule": {"lr_drops": ["4/5"]},
        },
    )


def _module_config(
    detector: dict[str, Any],
    loss_weights: tuple[float, float, float],
    classification: dict[str, Any],
    assignment: dict[str, Any],
    postprocess: dict[str, Any],
    optim: dict[str, Any],
) -> dict[str, Any]:
    """The ``DetectionModule`` node around a detector and the parts of its criterion."""
    return {
        "_target_": "detrlab.module.DetectionModule",
        "num_classes": detector["num_classes"],
        "num_queries": detector["num_queries"],
        "detector": detector,
        "criterion": {
            "_target_": "detrlab.losses.criterion.SetCriterion",
            "loss_weights": dict(zip(("ce", "bbox", "giou"), map(float, loss_weights))),
            "classification": classification,
            "assignment": assignment,
        },
        "postprocess": postprocess,
        "optim": optim,
    }


def _deformable_detector(detector: dict[str, Any]) -> dict[str, Any]:
    """``detector`` with the ``_target_`` of its class: ``DETA`` (without the options that define it,
    which are not its arguments) or ``DeformableDETR``."""
    defining = DETA.DEFINING_OPTIONS
    if all(bool(detector.get(key, False)) == value for key, value in defining.items()):
        rest = {key: value for key, value in detector.items() if key not in defining}
        return {**rest, "_target_": "detrlab.models.deformable_detr.DETA"}
    return {**detector, "_target_": "detrlab.models.deformable_detr.DeformableDETR"}


#: Swin-L in the layout of DETA's Swin backbone (384 pretraining, window 12).
_SWIN_L = {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48], "window_size": 12}


def swin_backbone_config(
    embed_dim: int,
    depths: list[int],
    num_heads: list[int],
    window_size: int,
    pretrain_img_size: int,
    return_stages: list[int],
    drop_path_rate: float,
) -> dict[str, Any]:
    """A ``SwinBackbone`` config: ``swin_l`` when the architecture is Swin-L, else explicit overrides."""
    architecture = {
        "embed_dim": int(embed_dim),
        "depths": [int(d) for d in depths],
        "num_heads": [int(h) for h in num_heads],
        "window_size": int(window_size),
    }
    config: dict[str, Any] = {
        "_target_": "detrlab.models.swin.SwinBackbone",
        "name": "swin_l",
        "pretrained": None,
        "return_stages": list(return_stages),
        "drop_path_rate": float(drop_path_rate),
        "gradient_checkpointing": False,
    }
    if architecture != _SWIN_L or int(pretrain_img_size) != 384:
        config.update(architecture, pretrain_img_size=int(pretrain_img_size))
    return config
