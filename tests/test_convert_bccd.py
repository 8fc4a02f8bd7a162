"""dataset_convert on the vendored BCCD data: counts, exact round trip, determinism."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from effdet.data.convert import ConvertSummary, dataset_convert
from effdet.data.records import read_examples


@pytest.fixture(scope="module")
def converted(bccd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bccd")
    images = bccd_dir / "images"
    train = dataset_convert(images, bccd_dir / "train.json", out, num_shards=4)
    val = dataset_convert(images, bccd_dir / "val.json", out, num_shards=3, include_mask=True)
    return {"out": out, "train": train, "val": val}


def _by_image(coco: dict) -> dict[int, list[dict]]:
    anns: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        anns[a["image_id"]].append(a)
    return anns


def test_record_counts(converted: dict) -> None:
    train: ConvertSummary = converted["train"]
    val: ConvertSummary = converted["val"]
    assert (train.images, train.boxes, train.skipped_boxes, train.shards) == (292, 3941, 0, 4)
    assert (val.images, val.boxes, val.skipped_boxes, val.shards) == (72, 945, 0, 3)
    assert train.warnings_file is None and val.masks_outside_box == 0
    out = converted["out"]
    assert len(list(read_examples(str(out / "train-*.tfrecord")))) == 292
    assert len(list(read_examples(str(out / "val-*.tfrecord")))) == 72
    assert sorted(p.name for p in out.iterdir()) == [
        *(f"train-{i:05d}-of-00004.tfrecord" for i in range(4)),
        *(f"val-{i:05d}-of-00003.tfrecord" for i in range(3)),
    ]


def test_round_trip_matches_json(converted: dict, bccd_dir: Path) -> None:
    coco = json.loads((bccd_dir / "train.json").read_text())
    images = {im["id"]: im for im in coco["images"]}
    anns = _by_image(coco)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    seen = set()
    for ex in read_examples(str(converted["out"] / "train-*.tfrecord")):
        image = images[int(ex["source_id"])]
        seen.add(image["id"])
        assert ex["filename"] == image["file_name"]
        assert ex["image"] == (bccd_dir / "images" / image["file_name"]).read_bytes()
        assert ex["format"] == "jpeg" and (ex["width"], ex["height"]) == (640, 480)
        expected = np.array(
            [[y / 480, x / 640, (y + h) / 480, (x + w) / 640]
             for x, y, w, h in (a["bbox"] for a in anns[image["id"]])]
        )
        np.testing.assert_allclose(ex["boxes"], expected, rtol=0, atol=1e-6)
        assert ex["classes"].tolist() == [a["category_id"] for a in anns[image["id"]]]
        assert ex["class_text"] == [names[a["category_id"]] for a in anns[image["id"]]]
        assert ex["is_crowd"].tolist() == [0] * len(expected)
        np.testing.assert_allclose(ex["area"], [a["area"] for a in anns[image["id"]]], rtol=1e-6)
        assert "masks" not in ex
    assert seen == set(images)


def test_masks_round_trip(converted: dict, bccd_dir: Path) -> None:
    coco = json.loads((bccd_dir / "val.json").read_text())
    anns = _by_image(coco)
    for ex in read_examples(str(converted["out"] / "val-*.tfrecord")):
        objects = anns[int(ex["source_id"])]
        assert ex["masks"].shape == (len(objects), 480, 640)
        for mask, ann in zip(ex["masks"], objects):
            rle = coco_mask.merge(coco_mask.frPyObjects(ann["segmentation"], 480, 640))
            np.testing.assert_array_equal(mask, coco_mask.decode(rle))
            assert set(np.unique(mask)) <= {0, 1}


def test_rerun_is_byte_identical(
    converted: dict, bccd_dir: Path, tmp_path: Path, tree_hashes: Callable[[Path], dict[str, str]]
) -> None:
    out: Path = converted["out"]
    before = tree_hashes(out)
    images = bccd_dir / "images"
    dataset_convert(images, bccd_dir / "val.json", out, num_shards=3, include_mask=True)
    assert tree_hashes(out) == before
    # One worker in-process gives the same bytes as the pool.
    dataset_convert(images, bccd_dir / "train.json", tmp_path, num_shards=4, workers=1)
    assert tree_hashes(tmp_path) == {k: v for k, v in before.items() if k.startswith("train")}
