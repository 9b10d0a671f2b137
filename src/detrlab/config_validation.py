"""Impossible config combinations, found before anything is built or any data is read.

Each check names the keys that conflict and how to resolve them; all problems are reported at
once. The detector and criterion constructors check their own arguments too, but a run would only
reach them after data set-up, and some conflicts (criterion vs detector, trainer vs machine) are
between config groups that no single constructor sees.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from detrlab.errors import ConfigError
from detrlab.schedule import ScheduleSettings

__all__ = ["validate_run_config"]

_DEFORMABLE_DETECTORS = ("DeformableDETR", "DETA")
_CLASSIFICATION_LOSSES = ("SoftmaxCrossEntropy", "SigmoidFocalLoss")


def validate_run_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every conflicting combination in ``cfg`` (train or eval config)."""
    problems: list[str] = []
    for check in _CHECKS:
        problems += check(cfg)
    if problems:
        raise ConfigError(
            "The configuration cannot run:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )


def _node(cfg: DictConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if node is None or not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node


def _target_name(node) -> str:
    target = node.get("_target_", "") if isinstance(node, DictConfig) else ""
    return str(target).rsplit(".", 1)[-1]


def _detector_checks(cfg: DictConfig) -> list[str]:
    detector = _node(cfg, "model.detector")
    if detector is None:
        return []
    problems = []
    deformable = _target_name(detector) in _DEFORMABLE_DETECTORS
    # DETA is two-stage with box refinement by definition (not a config key)
    is_deta = _target_name(detector) == "DETA"
    two_stage = is_deta or bool(detector.get("two_stage", False))
    if deformable and two_stage and not (is_deta or detector.get("with_box_refine", False)):
        problems.append(
            "model.detector.two_stage=true needs model.detector.with_box_refine=true (the encoder "
            "proposal head is the extra box head of refinement): set both, or two_stage=false"
        )
    if not two_stage:
        problems += _iou_assignment_without_two_stage(cfg, detector)
    levels = detector.get("num_feature_levels")
    queries = detector.get("num_queries")
    if deformable and levels is not None and int(levels) < 1:
        problems.append(f"model.detector.num_feature_levels={levels} must be >= 1")
    if (
        deformable
        and two_stage
        and detector.get("assign_first_stage", False)
        and levels is not None
        and queries is not None
        and int(queries) < int(levels)
    ):
        problems.append(
            f"{_queries_key(cfg)}={queries} is smaller than num_feature_levels={levels}: DETA's "
            "proposal selection takes num_queries // levels proposals per level, which would be 0. Use at "
            "least one query per level (the papers use 900 for 5 levels)"
        )
    return problems + _shared_value_checks(cfg, detector)


def _queries_key(cfg: DictConfig) -> str:
    return (
        "model.num_queries" if _node(cfg, "model.num_queries") is not None else "model.detector.num_queries"
    )


def _iou_assignment_without_two_stage(cfg: DictConfig, detector: DictConfig) -> list[str]:
    """DETA's IoU assignment and NMS proposal selection work on encoder proposals: two-stage only."""
    assignment = _node(cfg, "model.criterion.assignment")

    def assigned(key: str) -> bool:
        return isinstance(assignment, DictConfig) and assignment.get(key) is not None

    wanted = []
    if assigned("stage1_assigner") or detector.get("assign_first_stage", False):
        wanted.append(
            "assign_first_stage (model.criterion.assignment.stage1_assigner / model.detector.assign_first_stage: "
            "DETA's IoU assignment and NMS proposal selection)"
        )
    if assigned("stage2_assigner"):
        wanted.append(
            "assign_second_stage (model.criterion.assignment.stage2_assigner: DETA's IoU assignment)"
        )
    return [
        f"{what} needs a two-stage detector: its boxes are the encoder proposals. Use model=deta_r50, or "
        "add model.detector.two_stage=true model.detector.with_box_refine=true, or model/assigner=hungarian"
        for what in wanted
    ]


def _shared_value_checks(cfg: DictConfig, detector: DictConfig) -> list[str]:
    """Detector and criterion agree on the class count and on softmax vs sigmoid logits."""
    classification = _node(cfg, "model.criterion.classification")
    if not isinstance(classification, DictConfig):
        return []
    problems = []
    if (
        "num_classes" in classification
        and "num_classes" in detector
        and classification.num_classes != detector.num_classes
    ):
        problems.append(
            f"model.criterion.classification.num_classes={classification.num_classes} differs from "
            f"model.detector.num_classes={detector.num_classes}: set model.num_classes once (the "
            "model configs reference it from both parts)"
        )
    expected = (
        "SigmoidFocalLoss" if _target_name(detector) in _DEFORMABLE_DETECTORS else "SoftmaxCrossEntropy"
    )
    actual = _target_name(classification)
    if actual in _CLASSIFICATION_LOSSES and actual != expected:
        problems.append(
            f"model.detector is a {_target_name(detector)} but model.criterion.classification is a {actual}: "
            "DETR uses softmax logits with a no-object class (SoftmaxCrossEntropy), Deformable DETR / DETA "
            "sigmoid logits (SigmoidFocalLoss). Start from the matching model config instead of swapping one part"
        )
    return problems


def _trainer_checks(cfg: DictConfig) -> list[str]:
    trainer = _node(cfg, "trainer")
    if trainer is None:
        return []
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", 1)
    count = _requested_devices(devices)
    gpus = torch.cuda.device_count()
    problems = []
    if accelerator in ("gpu", "cuda") and gpus == 0:
        problems.append(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU visible: use "
            "trainer=cpu (or trainer.accelerator=cpu), or check CUDA_VISIBLE_DEVICES and the driver"
        )
    elif accelerator in ("gpu", "cuda", "auto") and gpus > 0 and count is not None and count > gpus:
        problems.append(
            f"trainer.devices={devices} but only {gpus} GPU(s) are visible: use trainer.devices={gpus} "
            "(more nodes: trainer.num_nodes)"
        )
    elif accelerator == "auto" and gpus == 0 and count is not None and count > 1:
        problems.append(
            f"trainer.devices={devices} with trainer.accelerator=auto, but no GPU is visible, so this would "
            f"start {count} CPU processes. For CPU data-parallel runs say so with trainer.accelerator=cpu; "
            "on a GPU machine check CUDA_VISIBLE_DEVICES"
        )
    return problems


def _requested_devices(devices) -> int | None:
    """How many devices ``trainer.devices`` asks for; ``None`` for "all" / "auto"."""
    if isinstance(devices, bool) or devices is None:
        return None
    if isinstance(devices, int):
        return None if devices < 0 else devices
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1", ""):
            return None
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        return int(text) if text.isdigit() else None
    return len(list(devices))  # a list of device indices


#: Output stride of backbone stage s (ResNet layer s / Swin stage s): 4, 8, 16, 32.
_STAGE_STRIDE = {1: 4, 2: 8, 3: 16, 4: 32}


def _feature_level_checks(cfg: DictConfig) -> list[str]:
    """Extra levels halve the coarsest backbone stage each time; past the largest image they are all 1 px."""
    detector = _node(cfg, "model.detector")
    if detector is None or _target_name(detector) not in _DEFORMABLE_DETECTORS:
        return []
    levels = detector.get("num_feature_levels")
    stages = _node(cfg, "model.detector.backbone.return_stages")
    data = _node(cfg, "data")
    if levels is None or stages is None or data is None or int(levels) < 1:
        return []
    sizes = [data.get(key) for key in ("max_size", "eval_max_size")]
    sizes = [int(size) for size in sizes if isinstance(size, int | float) and not isinstance(size, bool)]
    stages = [int(stage) for stage in stages]
    if not sizes or not stages or max(stages) not in _STAGE_STRIDE:
        return []
    largest = max(sizes)
    coarsest_stage_stride = _STAGE_STRIDE[max(stages)]
    extra = max(0, int(levels) - len(stages))
    coarsest = coarsest_stage_stride * 2**extra
    if coarsest <= largest:
        return []
    most = len(stages) + max(0, (largest // coarsest_stage_stride).bit_length() - 1)
    return [
        f"model.detector.num_feature_levels={levels}: the backbone gives {len(stages)} stage(s) "
        f"(return_stages={stages}, coarsest stride {coarsest_stage_stride}) and each extra level halves the "
        f"last one, so the coarsest level would have stride {coarsest}, larger than the largest image "
        f"(data max_size/eval_max_size {largest} px): it would be a single pixel for every image. "
        f"Use at most {most} levels (the papers use 4 or 5)"
    ]


def _schedule_checks(cfg: DictConfig) -> list[str]:
    """The LR schedule's own values (fractions, warmup) and the quickstart recipe on other data."""
    problems = []
    schedule = _node(cfg, "model.optim.schedule")
    if schedule is not None:
        try:
            ScheduleSettings.from_dict(OmegaConf.to_container(schedule, resolve=True))
        except ConfigError as error:
            problems.append(str(error).rstrip("."))
    choices = _hydra_choices()
    data_choice = choices.get("data")
    if choices.get("experiment") == "quickstart" and data_choice not in (None, "synthetic"):
        epochs = _node(cfg, "trainer.max_epochs")
        problems.append(
            f"experiment=quickstart (the default recipe: {epochs} epochs, sized for data=synthetic) was "
            f"kept with data={data_choice}. Name a recipe for it (experiment=deta_r50_coco, "
            "deta_r50_coco_24ep, deformable_detr_r50_coco, detr_r50_coco, deta_swin_coco) or drop the "
            "quickstart with ~experiment (then trainer.max_epochs from the trainer config, and the "
            "model's LR drops as fractions of it)"
        )
    return problems


def _hydra_choices() -> dict:
    """The config-group options picked for this run (``{}`` outside a Hydra run)."""
    if not HydraConfig.initialized():
        return {}
    return dict(HydraConfig.get().runtime.choices)


_CHECKS: tuple[Callable[[DictConfig], list[str]], ...] = (
    _detector_checks,
    _trainer_checks,
    _feature_level_checks,
    _schedule_checks,
)
