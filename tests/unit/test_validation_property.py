"""Property: any annotation JSON either loads or fails with our validation error, nothing else.

Entries are built from plausible values mixed with arbitrary JSON, so the generator reaches both
deep defects (a bad bbox in an otherwise fine file) and files that are not COCO at all. Whatever
passes validation must also turn into training targets without an error.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from detrlab.data.coco import CocoDetection
from detrlab.errors import DatasetValidationError

any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)


def mostly(plausible, other, odds: int = 6):
    """``plausible`` ``odds`` times in ``odds + 1`` (``st.one_of`` would not weight repeated branches)."""
    return st.sampled_from(range(odds + 1)).flatmap(lambda k: other if k == odds else plausible)


def field(plausible):
    """Mostly a plausible value, sometimes anything."""
    return mostly(plausible, any_json)


def entry(**fields):
    """A dict with all of ``fields`` or all but one, or occasionally not a dict at all."""
    full = st.fixed_dictionaries({k: field(v) for k, v in fields.items()})
    one_missing = st.sampled_from(list(fields)).flatmap(
        lambda dropped: st.fixed_dictionaries({k: field(v) for k, v in fields.items() if k != dropped})
    )
    return mostly(mostly(full, one_missing, odds=3), any_json)


small_ids = st.integers(1, 4)
coordinate = st.one_of(st.integers(-5, 20), st.floats(-5, 20, allow_nan=False))
images = entry(
    id=small_ids,
    file_name=mostly(st.sampled_from(["a.png", "b.png"]), st.just("missing.png"), 3),
    width=st.integers(0, 32) | st.floats(0.5, 32),
    height=st.integers(0, 32) | st.floats(0.5, 32),
)
annotations = entry(
    id=st.integers(1, 8),
    image_id=st.integers(1, 2),
    category_id=st.integers(1, 4),
    bbox=mostly(
        st.lists(coordinate, min_size=4, max_size=4), st.lists(coordinate, min_size=3, max_size=5), 3
    ),
    area=st.floats(-1, 100),
    iscrowd=st.integers(0, 2),
)
categories = entry(id=st.integers(1, 3), name=st.text(max_size=3))
declared = st.just([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}])
sections = {
    "images": field(st.lists(images, max_size=4)),
    "annotations": field(st.lists(annotations, max_size=6)),
    "categories": st.one_of(
        declared, declared, declared, field(st.lists(categories, min_size=1, max_size=3))
    ),
}
coco_like = mostly(st.fixed_dictionaries(sections), st.fixed_dictionaries({}, optional=sections), odds=3)
valid_annotation = st.fixed_dictionaries(
    {
        "id": st.integers(1, 50),
        "image_id": st.sampled_from([1, 2]),
        "category_id": st.sampled_from([1, 2, 3]),
        "bbox": st.tuples(st.floats(0, 3), st.floats(0, 3), st.floats(0.1, 4), st.floats(0.1, 4)).map(list),
        "iscrowd": st.sampled_from([0, 1]),
    }
)
VALID_IMAGES = [
    {"id": 1, "file_name": "a.png", "width": 4, "height": 4},
    {"id": 2, "file_name": "b.png", "width": 4, "height": 4},
]


def with_defect(annotations: list, section: str, key: str, value) -> dict:
    """A valid document whose first entry of ``section`` has ``key`` set to ``value`` (if it has one)."""
    document = {
        "images": [dict(image) for image in VALID_IMAGES],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    }
    if document[section]:
        document[section][0][key] = value
    return document


one_defect = st.builds(
    with_defect,
    st.lists(valid_annotation, max_size=5, unique_by=lambda a: a["id"]),
    st.sampled_from(["images", "annotations", "categories"]),
    st.sampled_from(
        ["id", "image_id", "category_id", "bbox", "file_name", "width", "height", "name", "area"]
    ),
    any_json | coordinate,
)
documents = st.one_of(mostly(coco_like, any_json, odds=5), one_defect)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=documents, policy=st.sampled_from(["strict", "skip"]))
def test_random_annotation_json_loads_or_raises_validation_error(data, policy):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name in ("a.png", "b.png"):
            Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / name)
        path = folder / "instances.json"
        path.write_text(json.dumps(data))
        try:
            dataset = CocoDetection(folder, path, on_bad_annotation=policy)
        except DatasetValidationError:
            event("rejected")
            return
        event(f"accepted ({policy}, {len(dataset)} images, {len(dataset.coco.anns)} annotations)")
        # Everything that passed is usable: targets for every image, in range labels, finite boxes.
        for index in range(len(dataset)):
            height, width = dataset.get_height_and_width(index)
            target = dataset.load_target(index, height, width)
            labels = target["labels"]
            assert ((labels >= 0) & (labels < dataset.num_classes)).all()
            assert torch.isfinite(target["boxes"]).all()
        if policy == "strict":
            assert dataset.validation_report.problems == []
