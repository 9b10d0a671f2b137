"""Start-up validation of COCO-format annotation files, with a strict or a skip policy.

Checks run on the JSON only (plus one ``stat`` per image file); decoding every image is opt-in
(``check_images=True``, config ``data.validate_images=true``) because it reads the whole dataset.

Problems found:

- file level (always an error, whatever the policy: there is nothing sensible to skip): not JSON,
  not an object, ``images`` / ``annotations`` / ``categories`` missing or not lists, malformed or
  duplicate categories;
- image level: malformed entry (id, file_name, width, height), duplicate image id, missing image
  file, undecodable image or size different from the JSON (``check_images``);
- annotation level: malformed entry (id, image_id, category_id, bbox, iscrowd), duplicate
  annotation id, unknown image id, category id not declared in ``categories``, box with zero or
  negative width/height, box entirely outside its image.

Boxes that only partly leave the image are not problems: the loader clips them, as the papers'
loaders do. With ``policy="strict"`` any problem raises :class:`DatasetValidationError` listing the
first ``max_listed`` problems (file, id, what is wrong) and counting the rest. With ``"skip"`` bad
images are dropped with all their annotations, bad annotations are dropped, and a summary is logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detrlab.errors import CorruptImageError, DatasetValidationError

log = logging.getLogger(__name__)

#: Accepted values of ``on_bad_annotation``.
POLICIES = ("strict", "skip")


@dataclass(frozen=True)
class Problem:
    """One defect: ``kind`` is "image" or "annotation", ``item_id`` the entry's id (or list position)."""

    kind: str
    item_id: Any
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.item_id}: {self.message}"


@dataclass
class ValidationReport:
    """What validation found in one annotation file and what the skip policy dropped."""

    annotation_file: Path
    problems: list[Problem] = field(default_factory=list)
    dropped_images: int = 0
    dropped_annotations: int = 0

    def describe(self, max_listed: int = 20) -> str:
        """Multi-line list of the first ``max_listed`` problems, and how many more there are."""
        lines = [f"  - {problem}" for problem in self.problems[:max_listed]]
        if len(self.problems) > max_listed:
            lines.append(f"  ... and {len(self.problems) - max_listed} more")
        return "\n".join(lines)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _file_error(annotation_file: Path, message: str) -> DatasetValidationError:
    return DatasetValidationError(
        f"'{annotation_file}' is not a valid COCO annotation file: {message}. A COCO detection file is a "
        "JSON object with lists `images` (id, file_name, width, height), `annotations` (id, image_id, "
        "category_id, bbox=[x, y, w, h]) and `categories` (id, name)."
    )


def read_annotation_json(annotation_file: str | os.PathLike) -> Any:
    """Parse the JSON file, turning a syntax error into a :class:`DatasetValidationError`."""
    path = Path(annotation_file)
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _file_error(path, f"it is not JSON ({error})") from error


def _check_structure(data: Any, annotation_file: Path) -> None:
    if not isinstance(data, dict):
        raise _file_error(annotation_file, f"the top level is a {type(data).__name__}, not an object")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise _file_error(annotation_file, f"the key `{key}` is missing")
        if not isinstance(data[key], list):
            raise _file_error(annotation_file, f"`{key}` is a {type(data[key]).__name__}, not a list")


def _check_categories(categories: list, annotation_file: Path) -> set[int]:
    ids: list[int] = []
    for position, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise _file_error(
                annotation_file, f"categories[{position}] has no integer `id` ({category!r:.80})"
            )
        if not isinstance(category.get("name"), str):
            raise _file_error(annotation_file, f"category {category['id']} has no string `name`")
        ids.append(category["id"])
    duplicates = sorted(cat_id for cat_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise _file_error(annotation_file, f"category ids {duplicates} are declared more than once")
    if not ids:
        raise _file_error(annotation_file, "`categories` is empty")
    return set(ids)


def _image_entry_problem(image: Any) -> str | None:
    if not isinstance(image, dict):
        return f"entry is a {type(image).__name__}, not an object"
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        return "`file_name` is missing or not a non-empty string"
    for key in ("width", "height"):
        if not _is_number(image.get(key)) or image[key] < 1:
            return f"`{key}` is {image.get(key)!r}; it must be a positive number of pixels"
    return None


def _annotation_problem(ann: dict, image: dict, category_ids: set[int]) -> str | None:
    if not _is_int(ann.get("category_id")):
        return f"`category_id` is {ann.get('category_id')!r}, not an integer"
    if ann["category_id"] not in category_ids:
        return f"category_id {ann['category_id']} is not declared in `categories`"
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
        return f"`iscrowd` is {ann['iscrowd']!r}; it must be 0 or 1"
    if "area" in ann and (not _is_number(ann["area"]) or ann["area"] < 0):
        return f"`area` is {ann['area']!r}; it must be a non-negative number"
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"`bbox` is {bbox!r:.80}; it must be [x, y, width, height] with 4 finite numbers"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"box {list(bbox)} has zero or negative size (width {w}, height {h})"
    width, height = image["width"], image["height"]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return f"box {list(bbox)} lies entirely outside its image ({width} x {height} pixels)"
    return None


def _entries_with_int_ids(
    entries: list, kind: str, report: ValidationReport
) -> Iterator[tuple[int, dict, int]]:
    """``(id, entry, how many entries have that id)`` of each entry with an integer ``id``, in file
    order; an entry without one is reported as a problem of ``kind`` when the iteration reaches it."""
    counts = Counter(e.get("id") for e in entries if isinstance(e, dict) and _is_int(e.get("id")))
    for position, entry in enumerate(entries):
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        if not _is_int(entry_id):
            report.problems.append(Problem(kind, f"at position {position}", "`id` is not an integer"))
            continue
        yield entry_id, entry, counts[entry_id]


def _decode_problem(path: Path, image: dict) -> str | None:
    # Imported here: decoding is opt-in and torchvision's decoder is only needed then.
    from detrlab.data.image_loading import decode_rgb

    try:
        decoded = decode_rgb(path)
    except CorruptImageError as error:
        return f"'{path}' cannot be decoded ({error.reason})"
    height, width = decoded.shape[-2:]
    if (height, width) != (image["height"], image["width"]):
        return (
            f"'{path}' is {width} x {height} pixels but the JSON says {image['width']} x {image['height']}; "
            "the boxes would be wrong"
        )
    return None


def validate_coco(
    data: Any,
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike | None,
    policy: str = "strict",
    check_images: bool = False,
    max_listed: int = 20,
) -> tuple[dict, ValidationReport]:
    """Validate parsed COCO JSON ``data``; return the data to use and the report.

    Args:
        data: the parsed JSON (any value: non-COCO input is reported, never crashes).
        annotation_file: where ``data`` came from (named in messages).
        image_dir: folder the ``file_name`` entries are relative to; ``None`` skips the file checks.
        policy: "strict" (raise on any problem) or "skip" (drop bad entries, log a summary).
        check_images: also decode every image and compare its size with the JSON.
        max_listed: problems listed in the error message / log before "... and N more".

    Returns:
        ``(clean, report)``: ``clean`` is a new dict with the same top-level keys, holding only the
        good images and annotations (identical content to ``data`` when nothing was wrong).

    Raises:
        DatasetValidationError: file-level problems (any policy) or any problem under "strict".
    """
    if policy not in POLICIES:
        raise DatasetValidationError(f"on_bad_annotation={policy!r}: choose one of {list(POLICIES)}.")
    annotation_file = Path(annotation_file)
    _check_structure(data, annotation_file)
    category_ids = _check_categories(data["categories"], annotation_file)
    report = ValidationReport(annotation_file)

    images: dict[int, dict] = {}
    for image_id, image, id_count in _entries_with_int_ids(data["images"], "image", report):
        problem = _image_entry_problem(image)
        if problem is None and id_count > 1:
            problem = f"image id {image_id} is used by {id_count} entries"
        if problem is None and image_dir is not None:
            path = Path(image_dir) / image["file_name"]
            if not path.is_file():
                problem = f"image file '{path}' does not exist"
            elif check_images:
                problem = _decode_problem(path, image)
        if problem is None:
            images[image_id] = image
        else:
            report.problems.append(Problem("image", image_id, problem))

    bad_image_ids = {p.item_id for p in report.problems if p.kind == "image"}
    annotations: list[dict] = []
    for ann_id, ann, id_count in _entries_with_int_ids(data["annotations"], "annotation", report):
        image_id = ann.get("image_id")
        if not _is_int(image_id) or (image_id not in images and image_id not in bad_image_ids):
            problem = f"image_id {image_id!r} is not the id of any entry in `images`"
        elif id_count > 1:
            problem = f"annotation id {ann_id} is used by {id_count} entries"
        elif image_id in bad_image_ids:
            # Dropped with its image; the image's problem is already reported.
            report.dropped_annotations += 1
            continue
        else:
            problem = _annotation_problem(ann, images[image_id], category_ids)
        if problem is None:
            # COCO evaluation needs `area`; hand-made files often leave it out: use the box area.
            annotations.append(ann if "area" in ann else {**ann, "area": ann["bbox"][2] * ann["bbox"][3]})
        else:
            report.problems.append(Problem("annotation", ann_id, problem))
            report.dropped_annotations += 1

    report.dropped_images = len(data["images"]) - len(images)
    if report.problems and policy == "strict":
        raise DatasetValidationError(
            f"'{annotation_file}' has {len(report.problems)} problem(s):\n{report.describe(max_listed)}\n"
            "Fix the annotation file, or set data.on_bad_annotation=skip to drop the bad images and "
            "annotations (they are counted and logged)."
        )
    if report.problems:
        log.warning(
            "'%s': skipped %d image(s) and %d annotation(s) with problems (data.on_bad_annotation=skip):\n%s",
            annotation_file,
            report.dropped_images,
            report.dropped_annotations,
            report.describe(max_listed),
        )
    clean = {**data, "images": list(images.values()), "annotations": annotations}
    return clean, report
