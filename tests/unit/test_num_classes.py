"""data.num_classes: null is filled from the annotation JSON and reaches the model config."""

from __future__ import annotations

import json

import pytest
from hydra.core.global_hydra import GlobalHydra

from detrlab.builders import resolve_num_classes
from detrlab.data.coco import read_category_ids
from detrlab.errors import ConfigError, DatasetNotFoundError
from tests.helpers import compose_config


def _write_annotations(path, category_ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    categories = [{"id": c, "name": f"class_{c}"} for c in category_ids]
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    return path


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def _coco_format(tmp_path, *extra):
    splits = [
        f"data.train_images={tmp_path}",
        f"data.train_annotations={tmp_path / 'train.json'}",
        f"data.val_images={tmp_path}",
        f"data.val_annotations={tmp_path / 'val.json'}",
    ]
    return compose_config("train", ["data=coco_format", "model=detr_r50", *splits, *extra], tmp_path)


def test_read_category_ids_sorts_sparse_ids(tmp_path):
    path = _write_annotations(tmp_path / "a.json", [42, 3, 17])
    assert read_category_ids(path) == [3, 17, 42]


def test_null_num_classes_is_read_from_the_json_and_reaches_the_model(tmp_path):
    _write_annotations(tmp_path / "val.json", [3, 17, 42])
    _write_annotations(tmp_path / "train.json", [3, 17, 42])
    cfg = _coco_format(tmp_path)
    assert cfg.data.num_classes is None
    resolve_num_classes(cfg.data)
    assert cfg.data.num_classes == 3
    assert cfg.model.detector.num_classes == 3
    assert cfg.model.criterion.classification.num_classes == 3


def test_train_json_is_used_when_val_json_is_absent(tmp_path):
    _write_annotations(tmp_path / "train.json", [1, 2, 5, 9, 11])
    cfg = _coco_format(tmp_path)
    resolve_num_classes(cfg.data)
    assert cfg.data.num_classes == 5


def test_an_explicit_num_classes_is_kept(tmp_path):
    _write_annotations(tmp_path / "val.json", [3, 17, 42])
    cfg = _coco_format(tmp_path, "data.num_classes=7")
    resolve_num_classes(cfg.data)
    assert cfg.data.num_classes == 7


def test_coco_layout_under_root_is_used_for_unset_paths(tmp_path):
    _write_annotations(tmp_path / "coco" / "annotations" / "instances_val2017.json", list(range(1, 81)))
    cfg = compose_config(
        "train",
        ["data=coco", f"data.root={tmp_path / 'coco'}", "data.num_classes=null", "data.val_annotations=null"],
        tmp_path,
    )
    resolve_num_classes(cfg.data)
    assert cfg.data.num_classes == 80


def test_missing_annotation_files_name_the_paths_and_the_fix(tmp_path):
    cfg = _coco_format(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"val\.json.*train\.json.*data\.num_classes="):
        resolve_num_classes(cfg.data)


def test_unset_annotation_path_names_the_key(tmp_path):
    cfg = compose_config("train", ["data=coco_format"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.val_annotations"):
        resolve_num_classes(cfg.data)
