"""``python -m detrlab.convert``: an imported checkpoint evaluates with ``eval.py`` (raw COCO ids for
91-logit models), and ``init_from`` starts training from imported or trained weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from detrlab import eval as evaluation
from detrlab import train
from detrlab.builders import build_model
from detrlab.checkpoint import load_checkpoint, stored_classes
from detrlab.convert import load_detector
from detrlab.convert.__main__ import main as convert_main
from detrlab.errors import CheckpointError
from detrlab.initial_weights import load_initial_weights
from tests.e2e.test_coco_format import _make_sparse_dataset
from tests.helpers import compose_config
from tests.unit.convert_fixtures import make_hf_model

#: The raw COCO id the tiny model is pushed towards (one of the sparse dataset's ids 3/17/42); as
#: a contiguous dataset label it would be out of range.
FAVOURED_ID = 17


@pytest.fixture(scope="module")
def converted_detr(tmp_path_factory) -> dict[str, Path]:
    """A 91-logit transformers DETR (class index = COCO id) saved, then converted with the CLI."""
    root = tmp_path_factory.mktemp("convert")
    model = make_hf_model("detr", num_labels=91)
    with torch.no_grad():
        model.class_labels_classifier.bias[FAVOURED_ID] += 8.0
    model.config.id2label = {i: f"coco_{i}" for i in range(91)}
    model.save_pretrained(root / "hf")
    status = convert_main([str(root / "hf"), str(root / "detr.ckpt")])
    assert status == 0
    return {"root": root, "hf": root / "hf", "ckpt": root / "detr.ckpt"}


def test_cli_writes_the_detector_and_what_its_classes_mean(converted_detr):
    checkpoint = load_checkpoint(converted_detr["ckpt"])
    names, category_ids = stored_classes(checkpoint)
    assert category_ids == list(range(91)) and names[17] == "coco_17"
    stored_model = checkpoint["detrlab_config"]["model"]
    assert stored_model["label_to_category_id"] == list(range(91))
    # The written module holds exactly the directly imported detector.
    direct = load_detector(converted_detr["hf"]).state_dict()
    written = {
        k.removeprefix("detector."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("detector.")
    }
    assert written.keys() == direct.keys()
    assert all(torch.equal(written[k], direct[k]) for k in direct)


def test_cli_reports_an_unreadable_source(tmp_path, capsys):
    assert convert_main([str(tmp_path / "nothing"), str(tmp_path / "out.ckpt")]) == 1
    assert "neither a transformers model directory" in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()


def test_eval_reports_raw_coco_ids_on_a_sparse_dataset(converted_detr):
    root = converted_detr["root"]
    paths = _make_sparse_dataset(root / "data")
    overrides = [
        f"ckpt_path={converted_detr['ckpt']}",
        "data=coco_format",
        *(f"data.{key}={value}" for key, value in paths.items()),
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        "data.eval_size=64",
        "data.eval_max_size=64",
        "trainer.accelerator=cpu",
    ]
    cfg = compose_config("eval", overrides, root / "eval")
    try:
        metrics = evaluation.run(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert "val/AP" in metrics and torch.isfinite(torch.tensor(metrics["val/loss"]))
    results = json.loads((root / "eval" / "predictions.json").read_text())
    written_ids = {r["category_id"] for r in results}
    # The class index is the COCO id: it comes out as itself, not through the dataset's label order.
    assert written_ids == {FAVOURED_ID}


def _tiny_detr_cfg(tmp_path, synthetic_data_dir, extra):
    from tests.helpers import TINY_OVERRIDES

    return compose_config(
        "train",
        [*TINY_OVERRIDES, "model=detr_small", f"paths.data_dir={synthetic_data_dir}", *extra],
        output_dir=tmp_path,
    )


def test_init_from_reinitialises_only_the_class_heads(tmp_path, synthetic_data_dir):
    # A "pretrained" run with 7 classes, fine-tuned on the 3-class synthetic data.
    source_cfg = _tiny_detr_cfg(tmp_path / "source", synthetic_data_dir, ["data.num_classes=7"])
    source = build_model(source_cfg.model)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "pretrained.ckpt")
    GlobalHydra.instance().clear()

    cfg = _tiny_detr_cfg(tmp_path / "finetune", synthetic_data_dir, [])
    target = build_model(cfg.model)
    before = {k: v.clone() for k, v in target.detector.state_dict().items()}
    report = load_initial_weights(target.detector, tmp_path / "pretrained.ckpt")
    GlobalHydra.instance().clear()

    assert report.reinitialised == ["class_embed.weight", "class_embed.bias"]
    state = target.detector.state_dict()
    for key, value in source.detector.state_dict().items():
        if key.startswith("class_embed"):
            assert torch.equal(state[key], before[key])  # kept the fresh initialisation
        else:
            assert torch.equal(state[key], value), key


def test_init_from_with_another_architecture_lists_the_differences(tmp_path, synthetic_data_dir):
    source_cfg = _tiny_detr_cfg(tmp_path / "source", synthetic_data_dir, ["model.detector.hidden_dim=48"])
    torch.save({"state_dict": build_model(source_cfg.model).state_dict()}, tmp_path / "wide.ckpt")
    GlobalHydra.instance().clear()
    cfg = _tiny_detr_cfg(tmp_path / "run", synthetic_data_dir, [])
    target = build_model(cfg.model)
    GlobalHydra.instance().clear()
    with pytest.raises(
        CheckpointError, match=r"shapes differ: .*query_embed.weight: source \(10, 48\) vs model \(10, 32\)"
    ):
        load_initial_weights(target.detector, tmp_path / "wide.ckpt")


def test_train_with_init_from_a_converted_checkpoint(converted_detr, tmp_path, synthetic_data_dir, caplog):
    # The converted model's own config, trained on the 3-class synthetic data: 91-logit heads are
    # replaced, the rest starts from the imported weights.
    stored = load_checkpoint(converted_detr["ckpt"])["detrlab_config"]["model"]
    cfg = _tiny_detr_cfg(tmp_path, synthetic_data_dir, [f"init_from={converted_detr['ckpt']}"])
    with open_dict(cfg):
        detector = dict(stored["detector"], num_classes=cfg.data.num_classes)
        cfg.model.detector = detector
        # the model-level value the module checks the detector against
        cfg.model.num_queries = detector["num_queries"]
    caplog.set_level(logging.INFO, logger="detrlab")
    try:
        metrics = train.run(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert "val/AP" in metrics
    assert "re-initialised (class count differs)" in caplog.text
