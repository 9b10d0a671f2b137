"""Every config in conf/ composes, and builds what it describes on the CPU."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
from omegaconf import OmegaConf
from torch import nn

from detrlab.builders import build_callbacks, build_loggers, build_model, build_trainer
from detrlab.module import DetectionModule
from tests.helpers import CONFIG_DIR, TINY_OVERRIDES, compose_config


def options(group: str) -> list[str]:
    return sorted(
        p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if p.stem != "default" or group == "trainer"
    )


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_builds(model, tmp_path):
    cfg = compose_config("train", [f"model={model}", "print_config=false"], tmp_path)
    # the design's contract: plain Hydra instantiation of the model node gives the module
    module = hydra.utils.instantiate(cfg.model)
    assert isinstance(module, DetectionModule)
    assert isinstance(module.detector, nn.Module)
    assert isinstance(module.criterion, nn.Module)
    assert module.detector.backbone is not None


@pytest.mark.parametrize("backbone", options("model/backbone"))
def test_every_backbone_config_builds(backbone, tmp_path):
    # ResNets are checked inside DETR (single scale), Swins inside DETA (multi-scale).
    model = "deta_r50" if backbone.startswith("swin") else "detr_r50"
    cfg = compose_config("train", [f"model={model}", f"model/backbone={backbone}", *TINY_OVERRIDES], tmp_path)
    assert cfg.model.detector.backbone.name.startswith(backbone.split("_")[0])
    module = build_model(cfg.model)
    expected = "SwinBackbone" if backbone.startswith("swin") else "ResNetBackbone"
    assert module.detector.backbone.__class__.__name__ == expected


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_config_builds_its_model(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    assert isinstance(build_model(cfg.model), DetectionModule)
    assert cfg.trainer.max_epochs > 0


@pytest.mark.parametrize("trainer", options("trainer"))
def test_every_trainer_config_builds(trainer, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}", "trainer.accelerator=cpu"], tmp_path)
    built = build_trainer(
        cfg.trainer,
        callbacks=build_callbacks(cfg.callbacks, run_config=cfg),
        loggers=build_loggers(cfg.logger),
    )
    assert isinstance(built, L.Trainer)
    assert built.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("debug", [name for name in options("debug") if name != "default"])
def test_every_debug_config_composes(debug, tmp_path):
    cfg = compose_config("train", [f"debug={debug}"], tmp_path)
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data.num_workers == 0


@pytest.mark.parametrize("data", options("data"))
def test_every_data_config_instantiates(data, tmp_path):
    # data=coco_format has no default paths: the user names each split's folder and JSON.
    paths = [
        f"data.{split}_{kind}={tmp_path / split}"
        for split in ("train", "val")
        for kind in ("images", "annotations")
    ]
    cfg = compose_config(
        "train",
        [f"data={data}", f"paths.data_dir={tmp_path}", *(paths if data == "coco_format" else [])],
        tmp_path,
    )
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule, L.LightningDataModule)
    assert cfg.data.num_classes == cfg.model.detector.num_classes


def test_eval_config_composes_with_a_checkpoint_path(tmp_path):
    cfg = compose_config("eval", ["ckpt_path=some.ckpt"], tmp_path)
    assert cfg.ckpt_path == "some.ckpt"
    assert cfg.get("model") is None  # taken from the checkpoint unless given


def test_train_config_resolves_completely(tmp_path):
    cfg = compose_config("train", [], tmp_path)
    resolved = {
        key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("paths", "model", "data", "trainer")
    }
    assert Path(resolved["paths"]["output_dir"]) == tmp_path
    assert resolved["model"]["criterion"]["classification"]["num_classes"] == 3
