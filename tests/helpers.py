"""Helpers shared by the tests: composing configs the way the entry points do."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"

#: Overrides that shrink the quickstart to seconds: 16 train / 8 val images of 64 px, a tiny model.
TINY_OVERRIDES = [
    "data.num_train=16",
    "data.num_val=8",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.train_scales=[64]",
    "data.max_size=64",
    "data.eval_size=64",
    "data.eval_max_size=64",
    "model.detector.hidden_dim=32",
    "model.detector.nheads=2",
    "model.detector.num_encoder_layers=1",
    "model.detector.num_decoder_layers=2",
    "model.detector.dim_feedforward=64",
    "model.num_queries=10",
    # the quickstart's 50-step warmup is longer than these runs
    "model.optim.schedule.warmup_iters=0",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.num_sanity_val_steps=0",
    "print_config=false",
]


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the entry points do, with outputs under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    # `${hydra:...}` interpolations need a live HydraConfig, as inside @hydra.main.
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def module_available(name: str) -> bool:
    """Whether ``import name`` would work (also when a parent package such as hydra_plugins is absent)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
