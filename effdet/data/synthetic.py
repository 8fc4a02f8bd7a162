"""A deterministic synthetic detection dataset in COCO format.

Coloured shapes (circle, square, triangle, diamond) on noisy gradient backgrounds, each
with its box and polygon segmentation. Shapes within an image do not overlap, so every
box and polygon describes exactly the visible shape. The same seed, size and count give
byte-identical files (with the same Pillow/libjpeg): all randomness comes from one
seeded numpy generator and the json carries no dates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "diamond")
MAX_OBJECTS = 6
JPEG_QUALITY = 90
_CIRCLE_VERTICES = 24


@dataclass(frozen=True)
class SyntheticSummary:
    images: int
    train_json: Path
    val_json: Path
    image_dir: Path


def make_dataset(
    out: Path, num_images: int, width: int, height: int, seed: int, val_fraction: float = 0.2
) -> SyntheticSummary:
    """Write `out/images/*.jpg` and `out/annotations/{train,val}.json`.

    The last round(num_images * val_fraction) images form the validation split; image and
    annotation ids are unique across both files.
    """
    rng = np.random.default_rng(seed)
    image_dir, ann_dir = out / "images", out / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    num_val = round(num_images * val_fraction)
    splits: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {"images": [], "annotations": []} for s in ("train", "val")
    }
    next_ann_id = 1
    for image_id in range(1, num_images + 1):
        file_name = f"{image_id:06d}.jpg"
        image, shapes = _draw_image(rng, width, height)
        image.save(image_dir / file_name, format="JPEG", quality=JPEG_QUALITY)
        split = splits["val" if image_id > num_images - num_val else "train"]
        split["images"].append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height}
        )
        for category_id, polygon in shapes:
            split["annotations"].append(_annotation(next_ann_id, image_id, category_id, polygon))
            next_ann_id += 1
    categories = [
        {"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES, 1)
    ]
    paths = {}
    for name, split in splits.items():
        paths[name] = ann_dir / f"{name}.json"
        doc = {"info": {"description": f"effdet synthetic shapes, seed {seed}"}, "licenses": []}
        doc.update(images=split["images"], annotations=split["annotations"], categories=categories)
        paths[name].write_text(json.dumps(doc, indent=1) + "\n")
    return SyntheticSummary(num_images, paths["train"], paths["val"], image_dir)


def _draw_image(
    rng: np.random.Generator, width: int, height: int
) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    image = Image.fromarray(_background(rng, width, height))
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float, float]] = []
    shapes: list[tuple[int, list[float]]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        category_id = int(rng.integers(1, len(CLASSES) + 1))
        size = float(rng.uniform(0.1, 0.35)) * min(width, height)
        cx = float(rng.uniform(size / 2, width - size / 2))
        cy = float(rng.uniform(size / 2, height - size / 2))
        box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if any(_overlap(box, other) for other in placed):
            continue  # the draws above still happen, so later images don't depend on this
        placed.append(box)
        polygon = _polygon(CLASSES[category_id - 1], cx, cy, size)
        draw.polygon(polygon, fill=colour)
        shapes.append((category_id, [round(v, 2) for xy in polygon for v in xy]))
    return image, shapes


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    start, end = rng.integers(0, 256, (2, 3))
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]
    gradient = start + (end - start) * ramp
    noise = rng.normal(0.0, 12.0, (height, width, 3))
    return np.clip(gradient + noise, 0, 255).astype(np.uint8)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _polygon(kind: str, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    r = size / 2
    if kind == "circle":
        steps = [2 * math.pi * i / _CIRCLE_VERTICES for i in range(_CIRCLE_VERTICES)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in steps]
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]  # diamond


def _annotation(ann_id: int, image_id: int, category_id: int, flat: list[float]) -> dict[str, Any]:
    xs, ys = flat[0::2], flat[1::2]
    x0, y0 = min(xs), min(ys)
    # Shoelace: COCO's area is the segment's, which is what its size buckets use.
    area = abs(sum(xs[i - 1] * ys[i] - xs[i] * ys[i - 1] for i in range(len(xs)))) / 2
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x0, y0, max(xs) - x0, max(ys) - y0],
        "area": round(area, 2),
        "iscrowd": 0,
        "segmentation": [flat],
    }
