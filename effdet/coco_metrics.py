"""COCO box metrics (pycocotools' COCOeval): the twelve standard numbers and AP per class.

Values COCOeval reports as -1 (nothing to measure, e.g. no small objects, or a class absent
from the evaluated images) become NaN here, and null in JSON, so they never average as -1.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from effdet.errors import EffdetError

log = logging.getLogger("effdet")

# COCOeval.stats order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_DESCRIPTIONS = (
    "AP   @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "AP   @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "AP   @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "AP   @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "AP   @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "AP   @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "AR   @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "AR   @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "AR   @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "AR   @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "AR   @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "AR   @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
)
DETECTION_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")


def coco_metrics(ground_truth: str | Path | Mapping[str, Any],
                 detections: Sequence[Mapping[str, Any]] | np.ndarray,
                 image_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """COCO bbox metrics of `detections` against `ground_truth` (a json path or its dict).

    detections: COCO result dicts, or rows (image_id, x, y, w, h, score, category_id) in
    original-image pixels. image_ids: evaluate only these images (default: every GT image);
    an image listed here without detections counts as all misses.
    Returns the twelve METRIC_NAMES floats and "per_class_AP" {category name: AP}.
    """
    gt = _load_ground_truth(ground_truth)
    results = _as_result_dicts(detections)
    _check_image_ids(gt, {r["image_id"] for r in results} | set(image_ids or ()), ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        dt = gt.loadRes(results) if results else _empty_results(gt)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted({int(i) for i in image_ids})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict[str, Any] = {name: _measured(value)
                               for name, value in zip(METRIC_NAMES, evaluator.stats)}
    metrics["per_class_AP"] = _per_class_ap(evaluator, gt)
    return metrics


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A log-ready table: COCO's summary lines, then AP per class."""
    lines = [f" {description} = {_show(metrics[name])}   {name}"
             for name, description in zip(METRIC_NAMES, _DESCRIPTIONS)]
    per_class = metrics.get("per_class_AP") or {}
    if per_class:
        width = max(len(name) for name in per_class)
        lines.append(" AP per class (IoU=0.50:0.95, area=all, maxDets=100):")
        lines += [f"   {name:<{width}}  {_show(ap)}" for name, ap in per_class.items()]
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """NaN → None, recursively, so json.dumps writes strict JSON (null, not NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _load_ground_truth(ground_truth: str | Path | Mapping[str, Any]) -> COCO:
    source = "ground truth" if isinstance(ground_truth, Mapping) else str(ground_truth)
    if isinstance(ground_truth, Mapping):
        dataset = copy.deepcopy(dict(ground_truth))  # COCO mutates what it indexes
    else:
        try:
            dataset = json.loads(Path(ground_truth).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EffdetError(f"{ground_truth}: ground-truth json not found") from None
        except (OSError, ValueError) as exc:
            raise EffdetError(f"{ground_truth}: cannot read ground-truth json ({exc})") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in dataset]
    if missing:
        raise EffdetError(f"{source}: not a COCO annotation file (no {', '.join(missing)})")
    for ann in dataset["annotations"]:
        # COCOeval indexes both; converters commonly leave them out.
        ann.setdefault("iscrowd", 0)
        if "area" not in ann and "bbox" in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _check_image_ids(gt: COCO, image_ids: set[int], ground_truth: Any) -> None:
    # Otherwise loadRes fails on a bare assert: shards and json from different datasets.
    unknown = sorted(image_ids - set(gt.getImgIds()))
    if unknown:
        source = "the ground truth" if isinstance(ground_truth, Mapping) else str(ground_truth)
        raise EffdetError(f"{len(unknown)} evaluated image ids are not in {source} "
                          f"(e.g. {unknown[:5]}): do the TFRecords and the json match?")


def _as_result_dicts(detections: Sequence[Mapping[str, Any]] | np.ndarray) -> list[dict[str, Any]]:
    if not isinstance(detections, np.ndarray):
        return [dict(d) for d in detections]
    rows = np.asarray(detections, dtype=np.float64).reshape(-1, len(DETECTION_COLUMNS))
    return [{"image_id": int(r[0]), "bbox": [float(v) for v in r[1:5]], "score": float(r[5]),
             "category_id": int(r[6])} for r in rows]


def _empty_results(gt: COCO) -> COCO:
    # loadRes cannot take an empty list; an empty result set scores every GT as missed.
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                  "categories": copy.deepcopy(gt.dataset["categories"])}
    dt.createIndex()
    return dt


def _per_class_ap(evaluator: COCOeval, gt: COCO) -> dict[str, float]:
    # precision: [IoU thresholds, recall thresholds, categories, area ranges, maxDets].
    precision = evaluator.eval["precision"]
    area_all = evaluator.params.areaRngLbl.index("all")
    max_dets = len(evaluator.params.maxDets) - 1  # the largest (100)
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, area_all, max_dets]
        valid = values[values > -1]
        per_class[gt.cats[category_id]["name"]] = float(valid.mean()) if valid.size else math.nan
    return per_class


def _measured(value: float) -> float:
    return math.nan if value == -1 else float(value)


def _show(value: float | None) -> str:
    return "  n/a" if value is None or math.isnan(value) else f"{value:.3f}"
