"""A COCO-format dataset with sparse category ids (3, 17, 42), crowd and empty images: train,
evaluate in one process and in two DDP processes (gloo), and check the id / coordinate round trip."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrlab import eval as evaluation
from detrlab import train
from detrlab.builders import build_datamodule
from detrlab.checkpoint import load_checkpoint, stored_classes
from detrlab.data.synthetic import SHAPE_NAMES, generate_shapes_dataset
from detrlab.evaluation.coco_eval import STAT_NAMES, CocoEvaluator
from detrlab.utils.boxes import normalized_cxcywh_to_absolute_xyxy
from tests.e2e.test_cli import run_cli
from tests.helpers import TINY_OVERRIDES, compose_config

SPARSE_IDS = {1: 3, 2: 17, 3: 42}  # synthetic id -> dataset id


def _make_sparse_dataset(root: Path) -> dict[str, Path]:
    """Synthetic shapes rewritten with category ids 3/17/42, one crowd box per split, one empty val image."""
    generate_shapes_dataset(root / "shapes", num_train=16, num_val=8, image_size=64, seed=0)
    paths = {}
    for split in ("train", "val"):
        data = json.loads((root / "shapes" / "annotations" / f"{split}.json").read_text())
        data["categories"] = [{**c, "id": SPARSE_IDS[c["id"]]} for c in data["categories"]][::-1]
        for ann in data["annotations"]:
            ann["category_id"] = SPARSE_IDS[ann["category_id"]]
        data["annotations"][0]["iscrowd"] = 1
        images = root / "shapes" / split
        if split == "val":
            # An image without objects: COCO evaluation counts its detections as false positives.
            Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(images / "empty.jpg")
            next_id = max(image["id"] for image in data["images"]) + 1
            data["images"].append({"id": next_id, "file_name": "empty.jpg", "height": 64, "width": 64})
        paths[f"{split}_images"] = images
        paths[f"{split}_annotations"] = root / f"{split}.json"
        paths[f"{split}_annotations"].write_text(json.dumps(data))
    return paths


def _ground_truth_from_predictions(annotation_file: Path, results_file: Path) -> None:
    """Per image with detections: its 3 best boxes, shifted by 0-3 px, as ground truth (the third
    with another category, the second marked crowd); the empty image stays empty."""
    data = json.loads(annotation_file.read_text())
    results = json.loads(results_file.read_text())
    rng = np.random.default_rng(0)
    empty_id = next(image["id"] for image in data["images"] if image["file_name"] == "empty.jpg")
    annotations = []
    for image in data["images"]:
        if image["id"] == empty_id:
            continue
        best = sorted((r for r in results if r["image_id"] == image["id"]), key=lambda r: -r["score"])[:3]
        for rank, result in enumerate(best):
            x, y, w, h = (v + rng.uniform(0, 3) for v in result["bbox"])
            category = (
                result["category_id"]
                if rank < 2
                else next(c for c in (3, 17, 42) if c != result["category_id"])
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rank == 1),
                }
            )
    data["annotations"] = annotations
    annotation_file.write_text(json.dumps(data))


def _tiny_coco_format_overrides(paths: dict[str, Path]) -> list[str]:
    synthetic_only = ("data.num_train", "data.num_val", "data.image_size")
    return [
        # The quickstart experiment sets synthetic-data sizes; this run composes its own recipe.
        "~experiment",
        "model=detr_small",
        "data=coco_format",
        *(f"data.{key}={value}" for key, value in paths.items()),
        "data.crop_scales=null",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        *(o for o in TINY_OVERRIDES if not o.startswith(synthetic_only)),
    ]


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    """Train the tiny DETR on the sparse-id dataset and evaluate its last checkpoint in one process."""
    root = tmp_path_factory.mktemp("sparse")
    paths = _make_sparse_dataset(root)
    train_cfg = compose_config("train", _tiny_coco_format_overrides(paths), root / "train")
    assert train_cfg.data.num_classes is None  # read from the JSON
    train.run(train_cfg)
    checkpoint = root / "train" / "checkpoints" / "last.ckpt"
    first_cfg = compose_config(
        "eval", [f"ckpt_path={checkpoint}", "trainer.accelerator=cpu"], root / "first_eval"
    )
    evaluation.run(first_cfg)
    # A model trained for one epoch scores AP 0 on the real boxes, which would make AP comparisons
    # vacuous. The validation ground truth is therefore rebuilt around the model's own detections.
    shutil.copy(paths["val_annotations"], root / "val_original.json")
    _ground_truth_from_predictions(paths["val_annotations"], root / "first_eval" / "predictions.json")
    eval_cfg = compose_config("eval", [f"ckpt_path={checkpoint}", "trainer.accelerator=cpu"], root / "eval")
    metrics = evaluation.run(eval_cfg)
    GlobalHydra.instance().clear()
    return {"root": root, "paths": paths, "checkpoint": checkpoint, "metrics": metrics, "eval_cfg": eval_cfg}


def _pycocotools_stats(gt_path: Path, results_path: Path) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def test_sparse_category_ids_round_trip(sparse_run):
    paths = sparse_run["paths"]
    checkpoint = load_checkpoint(sparse_run["checkpoint"])
    class_names, label_to_category_id = stored_classes(checkpoint)
    assert label_to_category_id == [3, 17, 42]
    assert class_names == list(SHAPE_NAMES)
    # num_classes came from the JSON into the model: 3 classes + "no object".
    assert checkpoint["state_dict"]["detector.class_embed.weight"].shape[0] == 4

    # Written predictions use the dataset's ids, and score exactly as pycocotools scores the file.
    results_file = sparse_run["root"] / "eval" / "predictions.json"
    results = json.loads(results_file.read_text())
    assert {r["category_id"] for r in results} <= {3, 17, 42}
    reference = _pycocotools_stats(paths["val_annotations"], results_file)
    ours = [sparse_run["metrics"][f"val/{name}"] for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    np.testing.assert_allclose(ours, reference[:6], rtol=0, atol=1e-6)

    # Ground truth through the training data path and back: ids -> labels -> ids, resized boxes ->
    # original pixels. Used as predictions, it must score a perfect AP.
    data_cfg = sparse_run["eval_cfg"].data.copy()
    data_cfg.val_annotations = str(sparse_run["root"] / "val_original.json")
    datamodule = build_datamodule(data_cfg)
    datamodule.setup("fit")
    val = datamodule.val_dataset
    evaluator = CocoEvaluator(val.coco, label_to_category_id=val.label_to_category_id)
    for index in range(len(val)):
        _, target = val[index]
        boxes = normalized_cxcywh_to_absolute_xyxy(target["boxes"], target["orig_size"])
        scores = torch.ones(len(boxes))
        evaluator.update(
            [int(target["image_id"])], [{"boxes": boxes, "labels": target["labels"], "scores": scores}]
        )
    assert evaluator.compute()["AP"] == pytest.approx(1.0, abs=1e-6)

    # Training targets hold the non-crowd annotations, as contiguous labels of their sparse ids.
    train_set = datamodule.train_dataset
    raw = json.loads(Path(paths["train_annotations"]).read_text())
    for index in range(len(train_set)):
        image_id = train_set.ids[index]
        _, target = train_set[index]
        expected = sorted(
            a["category_id"] for a in raw["annotations"] if a["image_id"] == image_id and not a.get("iscrowd")
        )
        assert sorted(label_to_category_id[int(label)] for label in target["labels"]) == expected


def test_eval_on_two_ddp_processes_matches_one_process(sparse_run):
    single = sparse_run["root"] / "eval" / "predictions.json"
    ddp_dir = sparse_run["root"] / "eval_ddp"
    result = run_cli(
        "eval.py",
        f"ckpt_path={sparse_run['checkpoint']}",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={ddp_dir}",
        cwd=sparse_run["root"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # 9 val images on 2 ranks: the distributed sampler repeats one image on rank 1; the gathered
    # predictions still hold each image once.
    ddp_results = json.loads((ddp_dir / "predictions.json").read_text())
    single_results = json.loads(single.read_text())
    key = lambda r: (r["image_id"], r["score"], r["category_id"])  # noqa: E731
    assert len(ddp_results) == len(single_results)
    for mine, reference in zip(sorted(ddp_results, key=key), sorted(single_results, key=key)):
        assert mine["image_id"] == reference["image_id"] and mine["category_id"] == reference["category_id"]
        np.testing.assert_allclose(
            mine["bbox"] + [mine["score"]], reference["bbox"] + [reference["score"]], atol=1e-4
        )

    ddp_stats = _pycocotools_stats(sparse_run["paths"]["val_annotations"], ddp_dir / "predictions.json")
    single_stats = [sparse_run["metrics"][f"val/{name}"] for name in STAT_NAMES[:9]]
    np.testing.assert_allclose(ddp_stats[:9], single_stats, rtol=0, atol=1e-6)
    assert 0.05 < single_stats[0] < 0.95  # a non-trivial AP, not all-zero or all-perfect
    # Rank 0 printed the same 12-line summary.
    printed = re.findall(r"Average (?:Precision|Recall).*", result.stdout)[-12:]
    reference = _pycocotools_stats(sparse_run["paths"]["val_annotations"], single)
    assert [line.rsplit("= ", 1)[1] for line in printed] == [f"{value:0.3f}" for value in reference]
    shutil.rmtree(ddp_dir, ignore_errors=True)
