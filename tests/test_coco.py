"""load_coco: structural checks with one-line errors naming culprits and counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from effdet.data.coco import load_coco
from effdet.errors import EffdetError


def _doc(**changes: Any) -> dict[str, Any]:
    doc = {
        "images": [{"id": 3, "file_name": "b.jpg", "width": 10, "height": 8},
                   {"id": 1, "file_name": "a.jpg", "width": 10, "height": 8}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2]}],
        "categories": [{"id": 2, "name": "thing"}],
    }
    doc.update(changes)
    return doc


def _load(tmp_path: Path, doc: Any, **kwargs: Any):
    path = tmp_path / "ann.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return load_coco(path, **kwargs)


def _error(tmp_path: Path, doc: Any, **kwargs: Any) -> str:
    with pytest.raises(EffdetError) as info:
        _load(tmp_path, doc, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "ann.json") + ": ")
    return message


def test_good_file_sorted_by_id(tmp_path: Path) -> None:
    data = _load(tmp_path, _doc())
    assert [im.id for im in data.images] == [1, 3]
    assert data.categories == {2: "thing"}
    assert [a["id"] for a in data.annotations[1]] == [5] and data.annotations[3] == []


def test_malformed_json(tmp_path: Path) -> None:
    assert "malformed JSON at line 1 column" in _error(tmp_path, '{"images": [')


def test_missing_keys(tmp_path: Path) -> None:
    doc = _doc()
    del doc["categories"]
    assert "'categories'" in _error(tmp_path, doc)
    assert "expected an object" in _error(tmp_path, "[]")


def test_unknown_ids_are_named_and_counted(tmp_path: Path) -> None:
    anns = [{"id": i, "image_id": 99, "category_id": 2, "bbox": [0, 0, 1, 1]} for i in range(1, 6)]
    anns.append({"id": 6, "image_id": 1, "category_id": 77, "bbox": [0, 0, 1, 1]})
    message = _error(tmp_path, _doc(annotations=anns))
    assert "6 problems: annotation 1: unknown image_id 99; annotation 2" in message
    assert "(and 3 more)" in message


def test_single_unknown_category(tmp_path: Path) -> None:
    anns = [{"id": 6, "image_id": 1, "category_id": 77, "bbox": [0, 0, 1, 1]}]
    assert _error(tmp_path, _doc(annotations=anns)).endswith(
        "annotation 6: unknown category_id 77"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"bbox": [1, 2, 3]}, "'bbox' must be 4"),
        ({"bbox": [1, 2, 3, float("nan")]}, "'bbox' must be 4"),
        ({"iscrowd": 2}, "'iscrowd'"),
        ({"image_id": "1"}, "'image_id' missing or not an integer"),
    ],
)
def test_bad_annotation_fields(tmp_path: Path, change: dict, expected: str) -> None:
    ann = {"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2], **change}
    assert expected in _error(tmp_path, _doc(annotations=[ann]))


def test_duplicates_and_bad_images(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 8}] * 2
    assert "image 1 'a.jpg': duplicate id" in _error(tmp_path, _doc(images=images))
    images = [{"id": 1, "file_name": "a.jpg", "width": 0, "height": 8}]
    assert "image #0" in _error(tmp_path, _doc(images=images, annotations=[]))


def test_segmentation_required_for_masks(tmp_path: Path) -> None:
    assert "no usable 'segmentation'" in _error(tmp_path, _doc(), require_segmentation=True)
    ann = {"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2],
           "segmentation": {"size": [5, 5], "counts": "abc"}}
    assert "RLE 'size' [5, 5]" in _error(tmp_path, _doc(annotations=[ann]), require_segmentation=True)
