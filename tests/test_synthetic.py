"""The synthetic shapes generator: deterministic, valid COCO, converts cleanly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pycocotools.coco import COCO

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import CLASSES, make_dataset


def _hashes(root: Path, tree_hashes: Callable[[Path], dict[str, str]]) -> dict[str, str]:
    return {**tree_hashes(root / "images"), **tree_hashes(root / "annotations")}


def test_deterministic(tmp_path: Path, tree_hashes: Callable[[Path], dict[str, str]]) -> None:
    make_dataset(tmp_path / "a", 6, 96, 64, seed=3)
    make_dataset(tmp_path / "b", 6, 96, 64, seed=3)
    make_dataset(tmp_path / "c", 6, 96, 64, seed=4)
    a = _hashes(tmp_path / "a", tree_hashes)
    assert a == _hashes(tmp_path / "b", tree_hashes)
    assert a != _hashes(tmp_path / "c", tree_hashes)


def test_valid_coco_that_converts_cleanly(tmp_path: Path) -> None:
    summary = make_dataset(tmp_path, 10, 128, 96, seed=0, val_fraction=0.3)
    train, val = COCO(str(summary.train_json)), COCO(str(summary.val_json))
    assert (len(train.getImgIds()), len(val.getImgIds())) == (7, 3)
    assert [c["name"] for c in train.loadCats(train.getCatIds())] == list(CLASSES)
    assert not set(train.getAnnIds()) & set(val.getAnnIds())
    for ann in train.loadAnns(train.getAnnIds()):
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 96 and w > 0 and h > 0
        assert 0 < train.annToMask(ann).sum() <= w * h + 2 * (w + h)
    result = dataset_convert(summary.image_dir, summary.train_json, tmp_path / "out",
                             include_mask=True, workers=1)
    assert result.images == 7 and result.boxes == len(train.getAnnIds())
    assert result.warnings_file is None
