"""Load a COCO annotations json and check it before anything is built from it.

Every problem found is collected, so one run tells the user about all of them (the error
names the first few and the count) instead of failing on one culprit at a time.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effdet.data.problems import raise_problems
from effdet.errors import EffdetError

REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoDataset:
    """A checked annotations file.

    `images` are sorted by id (the order every consumer uses, so output never depends on
    the order in the json); `annotations` maps image id to its annotations in file order.
    """

    path: Path
    images: tuple[CocoImage, ...]
    categories: Mapping[int, str]
    annotations: Mapping[int, list[dict[str, Any]]]


def load_coco(path: Path, require_segmentation: bool = False) -> CocoDataset:
    """Read and check `path`; raise EffdetError naming the problems if it is unusable."""
    where = str(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise EffdetError(f"{where}: cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EffdetError(
            f"{where}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise EffdetError(f"{where}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    if not isinstance(data, dict):
        raise EffdetError(f"{where}: top level is {type(data).__name__}, expected an object")
    missing = [k for k in REQUIRED_KEYS if not isinstance(data.get(k), list)]
    raise_problems(where, [f"missing or not a list: '{k}'" for k in missing])

    problems: list[str] = []
    categories = _categories(data["categories"], problems)
    images = _images(data["images"], problems)
    raise_problems(where, problems)  # annotations can only be checked against sound ids

    by_id = {im.id: im for im in images}
    annotations: dict[int, list[dict[str, Any]]] = {im.id: [] for im in images}
    seen: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        name = f"annotation {ann.get('id', f'#{i}')}" if isinstance(ann, dict) else f"annotation #{i}"
        problem = _annotation_problem(ann, seen, by_id, categories, require_segmentation)
        if problem:
            problems.append(f"{name}: {problem}")
        else:
            annotations[ann["image_id"]].append(ann)
    raise_problems(where, problems)
    return CocoDataset(
        path=path,
        images=tuple(sorted(images, key=lambda im: im.id)),
        categories=categories,
        annotations=annotations,
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _categories(entries: list[Any], problems: list[str]) -> dict[int, str]:
    categories: dict[int, str] = {}
    for i, c in enumerate(entries):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            problems.append(f"category #{i}: needs an integer 'id' and a string 'name'")
        elif c["id"] in categories:
            problems.append(f"category {c['id']}: duplicate id")
        else:
            categories[c["id"]] = c["name"]
    return categories


def _images(entries: list[Any], problems: list[str]) -> list[CocoImage]:
    images: list[CocoImage] = []
    ids: set[int] = set()
    for i, im in enumerate(entries):
        ok = (
            isinstance(im, dict)
            and _is_int(im.get("id"))
            and isinstance(im.get("file_name"), str)
            and im["file_name"] != ""
            and _is_int(im.get("width"))
            and _is_int(im.get("height"))
            and im["width"] > 0
            and im["height"] > 0
        )
        if not ok:
            problems.append(
                f"image #{i}: needs an integer 'id', a 'file_name' and positive integer "
                "'width' and 'height'"
            )
        elif im["id"] in ids:
            problems.append(f"image {im['id']} '{im['file_name']}': duplicate id")
        elif _escapes(im["file_name"]):
            problems.append(f"image {im['id']} '{im['file_name']}': file_name must be a path "
                            "inside the image directory (no absolute path, no '..' out of it)")
        else:
            ids.add(im["id"])
            images.append(CocoImage(im["id"], im["file_name"], im["width"], im["height"]))
    return images


def _escapes(file_name: str) -> bool:
    """Whether joining `file_name` to the image directory could leave it (checked on the
    text: a symbolic link inside the folder is the user's own choice)."""
    normal = posixpath.normpath(file_name.replace("\\", "/"))
    return posixpath.isabs(normal) or normal == ".." or normal.startswith("../")


def _annotation_problem(
    ann: Any,
    seen: set[int],
    images: Mapping[int, CocoImage],
    categories: Mapping[int, str],
    require_segmentation: bool,
) -> str | None:
    if not isinstance(ann, dict):
        return "not an object"
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            return f"'{key}' missing or not an integer"
    if ann["id"] in seen:
        return "duplicate id"
    seen.add(ann["id"])
    if ann["image_id"] not in images:
        return f"unknown image_id {ann['image_id']}"
    if ann["category_id"] not in categories:
        return f"unknown category_id {ann['category_id']}"
    if ann["category_id"] < 1:
        return (f"category_id {ann['category_id']} ('{categories[ann['category_id']][:40]}') is "
                "below 1: id 0 is the background in TAO's labels (dataset_config.num_classes "
                "counts it), so objects of this category would be learnt as background; "
                "number the categories from 1")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
        return "'bbox' must be 4 finite numbers [x, y, width, height]"
    if ann.get("iscrowd", 0) not in (0, 1):
        return "'iscrowd' must be 0 or 1"
    if "area" in ann and not _is_number(ann["area"]):
        return "'area' must be a finite number"
    if require_segmentation:
        return _segmentation_problem(ann.get("segmentation"), images[ann["image_id"]])
    return None


def _segmentation_problem(seg: Any, image: CocoImage) -> str | None:
    """Polygons or RLE in the shapes pycocotools accepts (needed for --include_mask)."""
    if isinstance(seg, list):
        if seg and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
            for p in seg
        ):
            return None
        return "'segmentation' polygons must each have an even number (>= 6) of coordinates"
    if isinstance(seg, dict) and isinstance(seg.get("counts"), (list, str)):
        if seg.get("size") == [image.height, image.width]:
            return None
        return f"RLE 'size' {seg.get('size')} is not the image's [{image.height}, {image.width}]"
    return "no usable 'segmentation' (needed by --include_mask)"
