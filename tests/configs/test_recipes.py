"""The COCO recipes compose to the papers' hyper-parameters, and a schedule always fits its epochs."""

from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra

from detrlab.config_validation import validate_run_config
from detrlab.errors import ConfigError
from detrlab.schedule import milestones_for_length
from tests.helpers import CONFIG_DIR, compose_config

# The papers' scripts (DETA configs/deta.sh, deta_2x.sh, deta_swin_ft.sh; Deformable DETR
# configs/r50_deformable_detr.sh; DETR's released 500-epoch model), written out independently of the
# YAML so that a changed recipe fails here.
PAPER_TABLE = {
    "deta_r50_coco": {
        "published_ap": 50.1,
        "epochs": 12,
        "drop_after": 10,
        "lr": 2e-4,
        "lr_backbone": 2e-5,
        "lr_linear_proj_mult": 0.1,
        "weight_decay": 1e-4,
        "batch_per_device": 2,
        "total_batch": 16,
        "clip": 0.1,
        "detector": "DETA",
        "backbone": "resnet50",
        "queries": 900,
        "levels": 5,
        "two_stage": True,
        "box_refine": True,
        "dim_feedforward": 2048,
        "dropout": 0.0,
        "assign_first_stage": True,
        "assign_second_stage": True,
        "loss_weights": {"ce": 1.0, "bbox": 5.0, "giou": 2.0},
        "max_size": 1333,
    },
    "deformable_detr_r50_coco": {
        "published_ap": 44.5,
        "epochs": 50,
        "drop_after": 40,
        "lr": 2e-4,
        "lr_backbone": 2e-5,
        "lr_linear_proj_mult": 0.1,
        "weight_decay": 1e-4,
        "batch_per_device": 2,
        "total_batch": 32,
        "clip": 0.1,
        "detector": "DeformableDETR",
        "backbone": "resnet50",
        "queries": 300,
        "levels": 4,
        "two_stage": False,
        "box_refine": False,
        "dim_feedforward": 1024,
        "dropout": 0.1,
        "assign_first_stage": False,
        "assign_second_stage": False,
        "loss_weights": {"ce": 2.0, "bbox": 5.0, "giou": 2.0},
        "max_size": 1333,
    },
    "detr_r50_coco": {
        "published_ap": 42.0,
        "epochs": 500,
        "drop_after": 400,
        "lr": 1e-4,
        "lr_backbone": 1e-5,
        "weight_decay": 1e-4,
        "batch_per_device": 2,
        "total_batch": 64,
        "clip": 0.1,
        "detector": "DETR",
        "backbone": "resnet50",
        "queries": 100,
        "dim_feedforward": 2048,
        "dropout": 0.1,
        "loss_weights": {"ce": 1.0, "bbox": 5.0, "giou": 2.0},
        "max_size": 1333,
    },
    "deta_swin_coco": {
        "published_ap": 62.9,
        "epochs": 24,
        "drop_after": 20,
        "lr": 5e-5,
        "lr_backbone": 5e-6,
        "lr_linear_proj_mult": 0.1,
        "weight_decay": 1e-4,
        "batch_per_device": 1,
        "total_batch": 16,
        "clip": 0.1,
        "detector": "DETA",
        "backbone": "swin_l",
        "queries": 900,
        "levels": 5,
        "two_stage": True,
        "box_refine": True,
        "dim_feedforward": 2048,
        "dropout": 0.0,
        "assign_first_stage": True,
        "assign_second_stage": True,
        "loss_weights": {"ce": 1.0, "bbox": 5.0, "giou": 2.0},
        "max_size": 2000,
    },
}
PAPER_TABLE["deta_r50_coco_24ep"] = {
    **PAPER_TABLE["deta_r50_coco"],
    "published_ap": 51.1,
    "epochs": 24,
    "drop_after": 20,
}


@pytest.fixture
def compose(tmp_path):
    def _compose(*overrides: str):
        return compose_config("train", list(overrides), tmp_path)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("recipe", sorted(PAPER_TABLE))
def test_recipe_composes_to_the_papers_hyper_parameters(recipe, compose):
    row = PAPER_TABLE[recipe]
    cfg = compose(f"experiment={recipe}", "data.root=/data/coco")
    trainer, optim, detector = cfg.trainer, cfg.model.optim, cfg.model.detector
    assert trainer.max_epochs == row["epochs"]
    assert milestones_for_length(optim.schedule.lr_drops, trainer.max_epochs) == [row["drop_after"]]
    assert optim.schedule.name == "step" and optim.schedule.interval == "epoch"
    assert optim.schedule.gamma == pytest.approx(0.1) and optim.schedule.warmup_iters == 0
    assert optim.lr == pytest.approx(row["lr"])
    assert optim.lr_backbone == pytest.approx(row["lr_backbone"])
    assert optim.get("lr_linear_proj_mult", 0.1) == pytest.approx(row.get("lr_linear_proj_mult", 0.1))
    assert optim.weight_decay == pytest.approx(row["weight_decay"])
    assert cfg.data.batch_size == row["batch_per_device"]
    assert cfg.data.batch_size * trainer.devices * trainer.num_nodes == row["total_batch"]
    assert trainer.strategy == "ddp"
    assert trainer.gradient_clip_val == pytest.approx(row["clip"])
    assert cfg.data.max_size == row["max_size"]
    assert detector._target_.rsplit(".", 1)[-1] == row["detector"]
    assert detector.backbone.name == row["backbone"]
    assert detector.num_queries == row["queries"]
    assert detector.dim_feedforward == row["dim_feedforward"]
    assert detector.dropout == pytest.approx(row["dropout"])
    assert dict(cfg.model.criterion.loss_weights) == row["loss_weights"]
    if "levels" in row:
        assert detector.num_feature_levels == row["levels"]
        # the DETA class is two-stage with box refinement by definition (it takes neither flag)
        is_deta = detector._target_.endswith(".DETA")
        assert detector.get("two_stage", is_deta) is row["two_stage"]
        assert detector.get("with_box_refine", is_deta) is row["box_refine"]
        assignment = cfg.model.criterion.assignment
        iou_assigned = assignment._target_.endswith(".DetaAssignment")
        assert (iou_assigned and assignment.get("stage1_assigner") is not None) is row["assign_first_stage"]
        assert (iou_assigned and assignment.get("stage2_assigner") is not None) is row["assign_second_stage"]
        # NMS proposal selection goes with the stage-1 assignment
        assert detector.assign_first_stage is row["assign_first_stage"]
    # the published AP is stated in the recipe
    assert f"{row['published_ap']} AP" in (CONFIG_DIR / "experiment" / f"{recipe}.yaml").read_text()


def test_deformable_detr_variants_are_the_documented_overrides(compose):
    cfg = compose(
        "experiment=deformable_detr_r50_coco",
        "data.root=/data/coco",
        "model.detector.with_box_refine=true",
        "model.detector.two_stage=true",
    )
    assert cfg.model.detector.two_stage and cfg.model.detector.with_box_refine
    assert cfg.trainer.max_epochs == 50


@pytest.mark.parametrize("model", ["detr_r50", "deformable_detr_r50", "deta_r50", "deta_swin"])
@pytest.mark.parametrize("epochs", [1, 12, 50, 300])
def test_without_a_recipe_every_drop_falls_inside_the_run(model, epochs, compose):
    cfg = compose("~experiment", f"model={model}", f"trainer.max_epochs={epochs}")
    milestones = milestones_for_length(cfg.model.optim.schedule.lr_drops, cfg.trainer.max_epochs)
    assert milestones and all(0 < m <= epochs for m in milestones)
    if epochs >= 12:  # a late drop, as in every paper: after 2/3 to 5/6 of the run
        assert all(0.6 * epochs <= m <= 0.9 * epochs for m in milestones)


def test_model_and_data_without_a_recipe_do_not_inherit_the_quickstart(compose):
    cfg = compose("model=deta_r50", "data=coco", "data.root=/data/coco", "trainer.accelerator=cpu")
    with pytest.raises(ConfigError, match=r"experiment=quickstart .* data=coco.*~experiment"):
        validate_run_config(cfg)
    dropped = compose(
        "~experiment", "model=deta_r50", "data=coco", "data.root=/data/coco", "trainer.accelerator=cpu"
    )
    validate_run_config(dropped)
    assert dropped.trainer.max_epochs == 50
    assert milestones_for_length(dropped.model.optim.schedule.lr_drops, 50) == [42]
    # the quickstart itself, and other models on its synthetic data, stay valid
    validate_run_config(compose("trainer.accelerator=cpu"))
    validate_run_config(compose("model=deta_r50", "model/assigner=hungarian", "trainer.accelerator=cpu"))


def test_the_headline_command_is_one_ddp_process_per_gpu_on_eight_gpus(compose, monkeypatch):
    """`python train.py model=deta_swin trainer.devices=8`: DDP over 8 GPUs there, a clear error here."""
    import lightning as L
    import torch

    cfg = compose("model=deta_swin", "trainer.devices=8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"trainer.devices=8 with trainer.accelerator=auto, but no GPU"):
        validate_run_config(cfg)

    # An 8-GPU machine as Lightning sees it (its own test-suite mocks the device count the same way).
    for module in ("lightning.fabric.accelerators.cuda", "lightning.pytorch.accelerators.cuda"):
        monkeypatch.setattr(f"{module}.num_cuda_devices", lambda: 8)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate_run_config(cfg)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        strategy=cfg.trainer.strategy,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes if "num_nodes" in cfg.trainer else 1,
        logger=False,
        enable_checkpointing=False,
    )
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert type(trainer.strategy.launcher).__name__ == "_SubprocessScriptLauncher"  # one process per GPU
    assert trainer.num_devices == 8 and trainer.world_size == 8
    assert type(trainer.accelerator).__name__ == "CUDAAccelerator"
