"""Shared fixtures: composed configs for tiny CPU runs on generated data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import tests.triton_interpreter  # noqa: F401  (first: must run before triton is imported)
from tests.helpers import TINY_OVERRIDES, compose_config


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A shared folder where the tiny synthetic dataset is generated once per session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_train_cfg(tmp_path, synthetic_data_dir) -> DictConfig:
    """The train config on tiny synthetic data, writing into ``tmp_path``."""
    cfg = compose_config(
        "train", [*TINY_OVERRIDES, f"paths.data_dir={synthetic_data_dir}"], output_dir=tmp_path
    )
    yield cfg
    GlobalHydra.instance().clear()
