"""Broken COCO-format datasets, each generated here: the exact error (strict) or skip counts (skip)."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
from PIL import Image

from detrlab.data.coco import CocoDetection
from detrlab.data.validation import validate_coco
from detrlab.errors import DatasetValidationError, DetrlabError

# Two 32x24 images, two categories, three good annotations.
GOOD = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 32, "height": 24},
        {"id": 2, "file_name": "b.png", "width": 32, "height": 24},
    ],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 7, "bbox": [20, 10, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 12, "image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
    ],
    "categories": [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}],
}


@pytest.fixture()
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((24, 32, 3), 128, dtype=np.uint8)).save(folder / name)
    return folder


def write(tmp_path, data) -> str:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def mutated(change) -> dict:
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def set_ann(index, **values):
    return lambda d: d["annotations"][index].update(values)


# (defect, mutation, expected problem line, images dropped by skip, annotations dropped by skip)
ENTRY_DEFECTS = [
    (
        "zero width",
        set_ann(0, bbox=[2, 3, 0, 8]),
        "annotation 10: box [2, 3, 0, 8] has zero or negative size (width 0, height 8)",
        0,
        1,
    ),
    (
        "negative height",
        set_ann(1, bbox=[20, 10, 10, -4]),
        "annotation 11: box [20, 10, 10, -4] has zero or negative size (width 10, height -4)",
        0,
        1,
    ),
    (
        "outside the image",
        set_ann(2, bbox=[40, 2, 5, 5]),
        "annotation 12: box [40, 2, 5, 5] lies entirely outside its image (32 x 24 pixels)",
        0,
        1,
    ),
    (
        "undeclared category",
        set_ann(0, category_id=99),
        "annotation 10: category_id 99 is not declared in `categories`",
        0,
        1,
    ),
    (
        "unknown image",
        set_ann(2, image_id=3),
        "annotation 12: image_id 3 is not the id of any entry in `images`",
        0,
        1,
    ),
    (
        "bbox wrong type",
        set_ann(1, bbox="20,10,10,10"),
        "annotation 11: `bbox` is '20,10,10,10'; it must be [x, y, width, height] with 4 finite numbers",
        0,
        1,
    ),
    (
        "duplicate annotation id",
        set_ann(1, id=10),
        "annotation 10: annotation id 10 is used by 2 entries",
        0,
        2,
    ),
    (
        # both entries are dropped (their annotations cannot be attributed), with image 1's two annotations
        "duplicate image id",
        lambda d: d["images"][1].update(id=1),
        "image 1: image id 1 is used by 2 entries",
        2,
        3,
    ),
    (
        "missing image file",
        lambda d: d["images"][1].update(file_name="missing.png"),
        "image 2: image file '{image_dir}/missing.png' does not exist",
        1,
        1,
    ),
    (
        "image width wrong type",
        lambda d: d["images"][0].update(width="32"),
        "image 1: `width` is '32'; it must be a positive number of pixels",
        1,
        2,
    ),
]


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [case[1:3] for case in ENTRY_DEFECTS],
    ids=[case[0] for case in ENTRY_DEFECTS],
)
def test_strict_names_file_id_and_problem(tmp_path, image_dir, mutation, expected):
    path = write(tmp_path, mutated(mutation))
    with pytest.raises(DatasetValidationError) as info:
        CocoDetection(image_dir, path, on_bad_annotation="strict")
    message = str(info.value)
    assert str(path) in message
    assert f"  - {expected.format(image_dir=image_dir)}" in message.splitlines()
    assert "data.on_bad_annotation=skip" in message


@pytest.mark.parametrize(
    ("mutation", "dropped_images", "dropped_annotations"),
    [(case[1], case[3], case[4]) for case in ENTRY_DEFECTS],
    ids=[case[0] for case in ENTRY_DEFECTS],
)
def test_skip_drops_and_counts(tmp_path, image_dir, mutation, dropped_images, dropped_annotations, caplog):
    path = write(tmp_path, mutated(mutation))
    dataset = CocoDetection(image_dir, path, on_bad_annotation="skip")
    report = dataset.validation_report
    assert (report.dropped_images, report.dropped_annotations) == (dropped_images, dropped_annotations)
    assert len(dataset) == 2 - dropped_images
    assert len(dataset.coco.anns) == 3 - dropped_annotations
    assert f"skipped {dropped_images} image(s) and {dropped_annotations} annotation(s)" in caplog.text
    # Whatever survived loads.
    for index in range(len(dataset)):
        dataset[index]


def test_good_file_passes_unchanged(tmp_path, image_dir):
    dataset = CocoDetection(image_dir, write(tmp_path, GOOD), on_bad_annotation="strict")
    assert dataset.validation_report.problems == []
    assert len(dataset) == 2 and len(dataset.coco.anns) == 3
    assert dataset.label_to_category_id == [5, 7]


def test_missing_area_is_filled_with_the_box_area(tmp_path, image_dir):
    data = mutated(lambda d: d["annotations"][0].pop("area"))
    dataset = CocoDetection(image_dir, write(tmp_path, data), on_bad_annotation="strict")
    assert dataset.coco.anns[10]["area"] == 80


def test_many_problems_list_the_first_and_count_the_rest(tmp_path, image_dir):
    data = copy.deepcopy(GOOD)
    data["annotations"] = [
        {"id": 100 + i, "image_id": 1, "category_id": 5, "bbox": [1, 1, 0, 1]} for i in range(25)
    ]
    with pytest.raises(DatasetValidationError) as info:
        CocoDetection(image_dir, write(tmp_path, data), on_bad_annotation="strict")
    message = str(info.value)
    assert "has 25 problem(s)" in message
    assert message.count("has zero or negative size") == 20
    assert "  ... and 5 more" in message
    assert "annotation 119:" in message and "annotation 120:" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "it is not JSON"),
        ("[1, 2]", "the top level is a list, not an object"),
        (json.dumps({"images": [], "categories": []}), "the key `annotations` is missing"),
        (json.dumps({"images": {}, "annotations": [], "categories": []}), "`images` is a dict, not a list"),
        (
            json.dumps({**GOOD, "categories": [{"id": "5", "name": "cat"}]}),
            "categories[0] has no integer `id`",
        ),
        (
            json.dumps({**GOOD, "categories": [{"id": 5, "name": "a"}, {"id": 5, "name": "b"}]}),
            "category ids [5] are declared more than once",
        ),
    ],
    ids=["syntax", "list", "missing key", "wrong type", "category id type", "duplicate category"],
)
@pytest.mark.parametrize("policy", ["strict", "skip"])
def test_file_level_problems_fail_under_any_policy(tmp_path, image_dir, content, expected, policy):
    path = write(tmp_path, content)
    with pytest.raises(DatasetValidationError, match=re.escape(expected)) as info:
        CocoDetection(image_dir, path, on_bad_annotation=policy)
    assert str(path) in str(info.value)


def test_validate_images_finds_corrupt_and_resized_files(tmp_path, image_dir):
    (image_dir / "a.png").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(image_dir / "b.png")
    path = write(tmp_path, GOOD)
    # JSON-only validation does not decode.
    CocoDetection(image_dir, path, on_bad_annotation="strict")
    with pytest.raises(DatasetValidationError) as info:
        CocoDetection(image_dir, path, on_bad_annotation="strict", validate_images=True)
    message = str(info.value)
    assert f"image 1: '{image_dir}/a.png' cannot be decoded" in message
    assert f"image 2: '{image_dir}/b.png' is 10 x 10 pixels but the JSON says 32 x 24" in message


def test_unknown_policy_is_rejected(tmp_path, image_dir):
    with pytest.raises(DatasetValidationError, match="on_bad_annotation='lenient'"):
        validate_coco(GOOD, tmp_path / "x.json", image_dir, policy="lenient")


def test_errors_are_user_errors():
    assert issubclass(DatasetValidationError, DetrlabError)
