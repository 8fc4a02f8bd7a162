"""`effdet inference`: draw detections on a folder of images, optionally with KITTI labels.

Images are decoded with PIL (grayscale, palette, CMYK → RGB; EXIF orientation ignored, as
everywhere in effdet) and run in batches through any runtime (`effdet.runtimes`). Annotated
images keep their file name and format; an unreadable image is logged and skipped. Class
names: `--label_map` (line i names class id i+1, TAO's convention), else the model's own
names, else `class_<id>`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from effdet.errors import EffdetError
from effdet.formats.atomic import atomic_path
from effdet.formats.kitti import format_kitti_line, write_kitti
from effdet.runtimes import Detections, open_detector
from effdet.spec import load_spec

log = logging.getLogger("effdet")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Distinct, saturated colours readable on photos; class id picks one (cycling).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
           (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128))


@dataclass(frozen=True)
class InferenceSummary:
    images: int  # annotated and written
    skipped: list[Path]  # unreadable images
    detections: int
    output_dir: Path
    label_dir: Path | None


@dataclass(frozen=True)
class _Loaded:
    path: Path
    image: Image.Image  # RGB
    format: str | None


def inference(image_dir: Path, output_dir: Path, experiment_spec: Path, model_path: Path,
              key: str | None, *, label_dir: Path | None = None, label_map: Path | None = None,
              threshold: float | None = None, batch_size: int = 1) -> InferenceSummary:
    """Detect objects in every image of image_dir; write annotated copies (and KITTI labels).

    threshold defaults to the spec's eval_config.min_score_thresh.
    """
    if batch_size < 1:
        raise EffdetError(f"batch size must be positive, got {batch_size}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise EffdetError(f"threshold must be between 0 and 1, got {threshold}")
    files = list_images(image_dir)
    if output_dir.resolve() == image_dir.resolve():  # annotated copies would replace the inputs
        raise EffdetError(f"{output_dir}: the output directory must differ from the input")
    config = load_spec(experiment_spec)
    names_from_file = read_label_map(label_map) if label_map is not None else None
    detector = open_detector(model_path, key, config, min_score=threshold)
    names = names_from_file if names_from_file is not None else detector.class_names
    log.info("inference on %d images with %s (score > %.3f)", len(files), model_path,
             detector.min_score)
    written, total = 0, 0
    skipped: list[Path] = []
    try:
        with tqdm(total=len(files), desc="inference", unit="image", file=sys.stderr) as bar:
            for batch in _batches(files, batch_size, skipped, bar):
                for item, found in zip(batch, detector.detect([np.asarray(b.image)
                                                               for b in batch])):
                    _write_outputs(item, found, names, output_dir, label_dir)
                    written += 1
                    total += len(found)
                bar.update(len(batch))
    finally:
        detector.close()
    log.info("wrote %d annotated images to %s (%d detections)%s", written, output_dir, total,
             f"; skipped {len(skipped)} unreadable" if skipped else "")
    return InferenceSummary(written, skipped, total, output_dir, label_dir)


def list_images(image_dir: Path) -> list[Path]:
    if not image_dir.is_dir():
        raise EffdetError(f"{image_dir}: not a directory")
    files = sorted(p for p in image_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EffdetError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_label_map(path: Path) -> dict[int, str]:
    """TAO's label map: line i (from 0) names category id i + 1; blank lines keep their id."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EffdetError(f"{path}: label map not found") from None
    names = {i + 1: line.strip() for i, line in enumerate(lines) if line.strip()}
    if not names:
        raise EffdetError(f"{path}: empty label map")
    return names


def _batches(files: Sequence[Path], batch_size: int, skipped: list[Path],
             bar: tqdm) -> Iterator[list[_Loaded]]:
    batch: list[_Loaded] = []
    for path in files:
        loaded = _load(path)
        if loaded is None:
            skipped.append(path)
            bar.update(1)
            continue
        batch.append(loaded)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load(path: Path) -> _Loaded | None:
    try:
        with Image.open(path) as image:
            image.load()
            return _Loaded(path, image.convert("RGB"), image.format)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("skipping %s: not a readable image (%s)", path, exc)
        return None


def _write_outputs(item: _Loaded, found: Detections, names: Mapping[int, str],
                   output_dir: Path, label_dir: Path | None) -> None:
    labels = [names.get(int(c), f"class_{int(c)}") for c in found.classes]
    annotated = draw_detections(item.image, found, labels)
    with atomic_path(output_dir / item.path.name) as temp:
        annotated.save(temp, format=item.format or "PNG", **_save_options(item.format))
    if label_dir is not None:
        write_kitti(label_dir / f"{item.path.stem}.txt",
                    [format_kitti_line(label, *map(float, box), float(score))
                     for label, box, score in zip(labels, found.boxes, found.scores)])


def _save_options(fmt: str | None) -> dict[str, int]:
    return {"quality": 95} if fmt == "JPEG" else {}


def draw_detections(image: Image.Image, found: Detections, labels: Sequence[str]) -> Image.Image:
    """A copy of `image` with each box outlined and tagged "name score" in its class colour."""
    annotated = image.copy()
    draw = ImageDraw.Draw(annotated)
    font = ImageFont.load_default()
    width = max(1, round(max(image.size) / 400))
    for box, score, class_id, label in zip(found.boxes, found.scores, found.classes, labels):
        colour = PALETTE[int(class_id) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        # Above the box when there is room, else just inside its top edge.
        shift = bottom - top + 2 if y1 - (bottom - top + 2) >= 0 else 0
        draw.rectangle((left, top - shift, right + 2, bottom - shift + 2), fill=colour)
        draw.text((x1 + 1, y1 - shift + 1), text, fill=_text_colour(colour), font=font)
    return annotated


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light class colours, white on dark ones (ITU-R BT.601 luma)."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue >= 128 else (255, 255, 255)
