"""Bad input: one-line errors naming the culprits, and no complete-looking shard left."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from effdet.data.convert import dataset_convert
from effdet.errors import EffdetError

Factory = Callable[..., Any]  # conftest's tiny_coco


def _convert(coco: Any, **kwargs: Any) -> object:
    return dataset_convert(coco.image_dir, coco.write(), coco.out, **kwargs)


def _fails(coco: Any, *fragments: str, **kwargs: Any) -> str:
    with pytest.raises(EffdetError) as info:
        _convert(coco, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    if coco.out.exists():
        assert list(coco.out.iterdir()) == [], "temporaries or shards left behind"
    return message


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_jpeg(tiny_coco: Factory, workers: int) -> None:
    coco = tiny_coco(3)
    path = coco.image_dir / "img2.jpg"
    path.write_bytes(path.read_bytes()[:-200])
    _fails(coco, "train.json", "image 2 'img2.jpg'", "corrupt JPEG", workers=workers)


def test_jpeg_missing_end_marker(tiny_coco: Factory) -> None:
    coco = tiny_coco(2)
    path = coco.image_dir / "img1.jpg"
    path.write_bytes(path.read_bytes()[:-2])
    _fails(coco, "image 1 'img1.jpg'", "end-of-image", workers=1)


def test_garbage_bytes(tiny_coco: Factory) -> None:
    coco = tiny_coco(2)
    (coco.image_dir / "img1.jpg").write_bytes(b"this is not an image" * 10)
    _fails(coco, "image 1 'img1.jpg'", "not a readable image", workers=1)


def test_missing_file(tiny_coco: Factory) -> None:
    coco = tiny_coco(2)
    (coco.image_dir / "img2.jpg").unlink()
    _fails(coco, "image 2 'img2.jpg'", "missing file")


def test_unknown_category(tiny_coco: Factory) -> None:
    coco = tiny_coco(2)
    coco.annotations[1]["category_id"] = 42
    _fails(coco, "annotation 101", "unknown category_id 42")


def test_category_id_0_is_an_error_naming_the_category(tiny_coco: Factory) -> None:
    coco = tiny_coco(2)
    coco.categories.append({"id": 0, "name": "person"})
    coco.annotations[1]["category_id"] = 0
    _fails(coco, "annotation 101", "category_id 0 ('person') is below 1",
           "dataset_config.num_classes")


def test_unused_category_id_0_is_accepted(tiny_coco: Factory) -> None:
    # Exports that list a super-category as id 0 without using it convert as before.
    coco = tiny_coco(2)
    coco.categories.append({"id": 0, "name": "cells"})
    _convert(coco)


def test_size_mismatch(tiny_coco: Factory) -> None:
    coco = tiny_coco(2)
    coco.images[0]["width"] = 65
    _fails(coco, "image 1 'img1.jpg'", "64x48", "65x48", workers=1)


def test_many_problems_are_counted(tiny_coco: Factory) -> None:
    coco = tiny_coco(6)
    for k in range(1, 6):
        (coco.image_dir / f"img{k}.jpg").unlink()
    message = _fails(coco, "5 problems", "img1.jpg", "img3.jpg", "(and 2 more)")
    assert "img4.jpg" not in message


def test_failed_run_keeps_earlier_shards(tiny_coco: Factory, tree_hashes: Callable) -> None:
    coco = tiny_coco(3)
    _convert(coco, num_shards=2, workers=1)
    before = tree_hashes(coco.out)
    (coco.image_dir / "img3.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(EffdetError):
        _convert(coco, num_shards=2, workers=1)
    assert tree_hashes(coco.out) == before


def test_stale_shards_and_warnings_replaced(tiny_coco: Factory) -> None:
    coco = tiny_coco(3)
    coco.add_box(1, [60.0, 4.0, 10.0, 10.0])  # leaves the 64-wide image
    _convert(coco, num_shards=3, workers=1)
    assert (coco.out / "train_warnings.json").exists()
    coco.annotations.pop()
    _convert(coco, num_shards=2, workers=1)
    assert sorted(p.name for p in coco.out.iterdir()) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]


def test_bad_arguments(tiny_coco: Factory, tmp_path: Path) -> None:
    coco = tiny_coco(1)
    with pytest.raises(EffdetError, match="num_shards"):
        _convert(coco, num_shards=0)
    with pytest.raises(EffdetError, match="tag"):
        _convert(coco, tag="a/b")
    with pytest.raises(EffdetError, match="image directory not found"):
        dataset_convert(tmp_path / "nope", coco.write(), coco.out)
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(EffdetError, match="annotations"):
        dataset_convert(coco.image_dir, tmp_path / "bad.json", coco.out)
