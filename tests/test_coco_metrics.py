"""COCO metrics: the same numbers as pycocotools, per-class AP, subsets, no detections."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from effdet.coco_metrics import METRIC_NAMES, coco_metrics, format_metrics, json_ready
from effdet.errors import EffdetError

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 9, "name": "bird"}]


def ground_truth(num_images: int = 12, seed: int = 0) -> dict:
    """Boxes of every COCO size class (small < 32², medium, large > 96²) over three classes."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 400,
                       "height": 300})
        for _ in range(int(rng.integers(1, 6))):
            w, h = rng.choice([8.0, 50.0, 150.0]) * rng.uniform(0.7, 1.3, 2)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 300 - h)
            # Class 9 only in the first half: a later subset of images has none of it.
            ids = [1, 3, 9] if image_id <= num_images // 2 else [1, 3]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice(ids)), "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def noisy_detections(gt: dict, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for ann in gt["annotations"]:
        if rng.uniform() < 0.8:  # some misses
            size = np.tile(ann["bbox"][2:], 2)
            x, y, w, h = np.asarray(ann["bbox"]) + rng.normal(0, 0.08, 4) * size
            category = ann["category_id"] if rng.uniform() < 0.9 else 1
            rows.append([ann["image_id"], x, y, abs(w), abs(h), rng.uniform(0.2, 1.0), category])
    for image in gt["images"]:  # false positives
        for _ in range(3):
            rows.append([image["id"], *rng.uniform(0, 200, 2), *rng.uniform(5, 100, 2),
                         rng.uniform(0.0, 0.6), int(rng.choice([1, 3, 9]))])
    return np.asarray(rows)


def pycocotools_stats(gt_path, rows, image_ids=None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(rows), iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def as_array(metrics: dict) -> np.ndarray:
    return np.asarray([metrics[name] for name in METRIC_NAMES], dtype=float)


def test_numbers_equal_pycocotools(tmp_path):
    gt = ground_truth()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    rows = noisy_detections(gt)
    metrics = coco_metrics(path, rows)
    expected = pycocotools_stats(path, rows)
    expected[expected == -1] = np.nan
    np.testing.assert_array_equal(as_array(metrics), expected)
    assert 0.1 < metrics["AP"] < 0.95
    # COCO result dicts give the same numbers as [N, 7] rows, and a dict GT as a path.
    dicts = [{"image_id": int(r[0]), "bbox": list(r[1:5]), "score": r[5], "category_id": int(r[6])}
             for r in rows]
    np.testing.assert_array_equal(as_array(coco_metrics(gt, dicts)), as_array(metrics))


def test_per_class_ap_from_the_precision_array(tmp_path):
    gt = ground_truth()
    metrics = coco_metrics(gt, noisy_detections(gt))
    per_class = metrics["per_class_AP"]
    assert list(per_class) == ["cat", "dog", "bird"]
    assert all(0.0 <= ap <= 1.0 for ap in per_class.values())
    # Mean over classes of the per-class AP is COCO's AP (all classes present).
    assert np.mean(list(per_class.values())) == pytest.approx(metrics["AP"], abs=1e-12)


def test_ground_truth_as_detections_scores_one():
    gt = ground_truth()
    rows = [[a["image_id"], *a["bbox"], 1.0, a["category_id"]] for a in gt["annotations"]]
    metrics = coco_metrics(gt, np.asarray(rows))
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    assert all(ap == pytest.approx(1.0) for ap in metrics["per_class_AP"].values())


def test_image_subset_and_missing_class(tmp_path):
    gt = ground_truth()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    rows = noisy_detections(gt)
    subset = [7, 8, 9, 10, 11, 12]  # no class-9 ("bird") boxes in these images
    metrics = coco_metrics(path, rows, image_ids=subset)
    expected = pycocotools_stats(path, rows, subset)
    expected[expected == -1] = np.nan
    np.testing.assert_array_equal(as_array(metrics), expected)
    assert metrics != coco_metrics(path, rows)
    assert math.isnan(metrics["per_class_AP"]["bird"])
    assert json.loads(json.dumps(json_ready(metrics)))["per_class_AP"]["bird"] is None


def test_no_detections_is_all_zero_not_a_crash():
    gt = ground_truth()
    metrics = coco_metrics(gt, np.zeros((0, 7)))
    assert all(metrics[name] == 0.0 for name in METRIC_NAMES)
    assert all(ap == 0.0 for ap in metrics["per_class_AP"].values())
    assert coco_metrics(gt, [])["AP"] == 0.0


def test_table_has_twelve_lines_and_classes():
    gt = ground_truth()
    table = format_metrics(coco_metrics(gt, noisy_detections(gt), image_ids=[7, 8]))
    assert sum(line.strip().startswith(("AP   @", "AR   @")) for line in table.splitlines()) == 12
    assert "bird" in table and "n/a" in table


def test_ground_truth_without_area_or_iscrowd():
    gt = ground_truth()
    for ann in gt["annotations"]:
        del ann["area"], ann["iscrowd"]
    rows = [[a["image_id"], *a["bbox"], 1.0, a["category_id"]] for a in gt["annotations"]]
    assert coco_metrics(gt, np.asarray(rows))["AP"] == pytest.approx(1.0)
    assert "area" not in gt["annotations"][0]  # the caller's dict is left alone


def test_bad_ground_truth_is_a_user_error(tmp_path):
    with pytest.raises(EffdetError, match="not found"):
        coco_metrics(tmp_path / "missing.json", [])
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(EffdetError, match="not a COCO annotation file"):
        coco_metrics(tmp_path / "x.json", [])
    with pytest.raises(EffdetError, match=r"not in the ground truth \(e.g. \[99\]\)"):
        coco_metrics(ground_truth(), np.array([[99, 0, 0, 5, 5, 0.9, 1]]))
