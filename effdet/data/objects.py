"""Turn one image's COCO annotations into the per-object record fields.

A box that leaves the image (by more than EDGE_TOLERANCE_PX) or has no area is not
written: it is reported under "box" in the warnings file, as TAO does. The tolerance
absorbs float round-off in converted datasets (x + w = 640.0000001); coordinates within it
are clamped to the edge so normalised values stay within [0, 1].

With masks, a mask pixel counts as inside its box when its unit square overlaps the box;
an object with a set pixel elsewhere is reported under "mask" but still written.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

EDGE_TOLERANCE_PX = 1e-3


@dataclass
class Objects:
    """Per-object columns of one record, plus the annotation ids to warn about."""

    xmin: list[float] = field(default_factory=list)
    xmax: list[float] = field(default_factory=list)
    ymin: list[float] = field(default_factory=list)
    ymax: list[float] = field(default_factory=list)
    class_text: list[bytes] = field(default_factory=list)
    class_label: list[int] = field(default_factory=list)
    is_crowd: list[int] = field(default_factory=list)
    area: list[float] = field(default_factory=list)
    masks_png: list[bytes] = field(default_factory=list)
    bad_boxes: list[int] = field(default_factory=list)
    bad_masks: list[int] = field(default_factory=list)


def build_objects(
    annotations: Sequence[Mapping[str, Any]],
    width: int,
    height: int,
    categories: Mapping[int, str],
    include_mask: bool,
) -> Objects:
    """The record columns for `annotations` (already checked by `load_coco`)."""
    objects = Objects()
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if not _inside(x, y, w, h, width, height):
            objects.bad_boxes.append(ann["id"])
            continue
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        objects.xmin.append(x0 / width)
        objects.xmax.append(x1 / width)
        objects.ymin.append(y0 / height)
        objects.ymax.append(y1 / height)
        objects.class_text.append(categories[ann["category_id"]].encode())
        objects.class_label.append(ann["category_id"])
        objects.is_crowd.append(int(ann.get("iscrowd", 0)))
        objects.area.append(float(ann.get("area", w * h)))
        if include_mask:
            binary = decode_segmentation(ann["segmentation"], width, height)
            if _outside_box(binary, x0, y0, x1, y1):
                objects.bad_masks.append(ann["id"])
            objects.masks_png.append(_png(binary))
    return objects


def _inside(x: float, y: float, w: float, h: float, width: int, height: int) -> bool:
    tol = EDGE_TOLERANCE_PX
    return w > 0 and h > 0 and x >= -tol and y >= -tol and x + w <= width + tol and y + h <= height + tol


def decode_segmentation(segmentation: Any, width: int, height: int) -> np.ndarray:
    """A (height, width) uint8 0/1 mask from COCO polygons or RLE (as COCO's annToRLE)."""
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return coco_mask.decode(rle)


def _outside_box(binary: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> bool:
    c0, r0 = math.floor(x0), math.floor(y0)
    c1, r1 = math.ceil(x1), math.ceil(y1)
    return bool(
        binary[:r0].any() or binary[r1:].any() or binary[:, :c0].any() or binary[:, c1:].any()
    )


def _png(binary: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(binary).save(out, format="PNG")
    return out.getvalue()
