"""`effdet inference`: draw detections on a folder of images (or one image), optionally with
KITTI labels.

Images are decoded with PIL (grayscale, palette, CMYK → RGB; EXIF orientation ignored, as
everywhere in effdet) and run in batches through any runtime (`effdet.runtimes`). Annotated
images keep their file name and format; an unreadable or oversized image is logged and
skipped. Label files are TAO's `<stem>.txt`, except where several inputs share a stem
(`x.jpg`, `x.png`): those keep their suffix (`x.jpg.txt`, `x.png.txt`) so none overwrites
another. Class names: `--label_map` (line i names class id i+1, TAO's convention), else the
model's own names, else `class_<id>`.

The output folders are built under temporary names and renamed into place at the end, so
they never mix files of two runs: an existing non-empty folder is refused unless `force`,
which replaces it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from effdet.annotate import draw_detections
from effdet.data.images import MAX_IMAGE_PIXELS, open_image
from effdet.errors import EffdetError
from effdet.formats.atomic import remove_stale_temps, writing
from effdet.formats.kitti import format_kitti_line, write_kitti
from effdet.runtimes import Detections, open_detector
from effdet.spec import load_spec

log = logging.getLogger("effdet")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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


def inference(image_path: Path, output_dir: Path, experiment_spec: Path, model_path: Path,
              key: str | None, *, label_dir: Path | None = None, label_map: Path | None = None,
              threshold: float | None = None, batch_size: int = 1,
              force: bool = False) -> InferenceSummary:
    """Detect objects in image_path (a folder, or one image); write annotated copies (and
    KITTI labels) into output_dir (and label_dir), replacing them only with `force`.

    threshold defaults to the spec's eval_config.min_score_thresh.
    """
    if batch_size < 1:
        raise EffdetError(f"batch size must be positive, got {batch_size}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise EffdetError(f"threshold must be between 0 and 1, got {threshold}")
    files = list_images(image_path)
    folders = _output_folders(image_path, output_dir, label_dir, force)
    config = load_spec(experiment_spec)
    names_from_file = read_label_map(label_map) if label_map is not None else None
    detector = open_detector(model_path, key, config, min_score=threshold)
    names = names_from_file if names_from_file is not None else detector.class_names
    label_names = label_file_names(files)
    log.info("inference on %d images with %s (score > %.3f)", len(files), model_path,
             detector.min_score)
    written, total = 0, 0
    skipped: list[Path] = []
    temps = {folder: _temp_folder(folder) for folder in folders}
    # folders[-1] is the label folder: the second one, or the image folder itself.
    image_temp, label_temp = temps[folders[0]], temps[folders[-1]]
    try:
        with tqdm(total=len(files), desc="inference", unit="image", file=sys.stderr) as bar:
            for batch in _batches(files, batch_size, skipped, bar):
                for item, found in zip(batch, detector.detect([np.asarray(b.image)
                                                               for b in batch])):
                    label_file = None if label_dir is None else label_temp / label_names[item.path]
                    _write_outputs(item, found, names, image_temp, label_file)
                    written += 1
                    total += len(found)
                bar.update(len(batch))
        for folder, temp in temps.items():
            _replace_folder(temp, folder)
    finally:
        detector.close()
        for temp in temps.values():
            shutil.rmtree(temp, ignore_errors=True)
    log.info("wrote %d annotated images to %s (%d detections)%s", written, output_dir, total,
             f"; skipped {len(skipped)} unreadable or oversized" if skipped else "")
    return InferenceSummary(written, skipped, total, output_dir, label_dir)


def list_images(image_path: Path) -> list[Path]:
    """The images of a folder (sorted, hidden files and other suffixes ignored), or the one
    image file given."""
    if image_path.is_file():
        if image_path.suffix.lower() not in IMAGE_SUFFIXES:
            raise EffdetError(f"{image_path}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
        return [image_path]
    if not image_path.is_dir():
        raise EffdetError(f"{image_path}: no such image file or directory")
    files = sorted(p for p in image_path.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EffdetError(f"{image_path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def label_file_names(files: Sequence[Path]) -> dict[Path, str]:
    """TAO's `<stem>.txt`, or `<name>.txt` for images whose stem another image shares
    (compared case-blind, so the names stay distinct on case-insensitive disks too)."""
    stems = Counter(path.stem.casefold() for path in files)
    return {path: f"{path.stem if stems[path.stem.casefold()] == 1 else path.name}.txt"
            for path in files}


def _output_folders(image_path: Path, output_dir: Path, label_dir: Path | None,
                    force: bool) -> list[Path]:
    """The distinct output folders, checked: none holds the input, none is inside another,
    and an existing non-empty one is replaced only with `force`."""
    source = (image_path if image_path.is_dir() else image_path.parent).resolve()
    folders = [output_dir] + ([label_dir] if label_dir is not None
                              and label_dir.resolve() != output_dir.resolve() else [])
    for folder in folders:
        target = folder.resolve()
        if target == source:  # annotated copies would replace the inputs
            raise EffdetError(f"{folder}: the output directory must differ from the input")
        if target in source.parents:
            raise EffdetError(f"{folder}: the output directory must not contain the input "
                              f"{image_path}")
        if folder.exists() and not folder.is_dir():
            raise EffdetError(f"{folder}: exists and is not a directory")
        if not force and folder.is_dir() and any(folder.iterdir()):
            raise EffdetError(f"{folder}: output directory is not empty (files of another "
                              "run would mix with this one's); use --force to replace it")
    first, last = folders[0].resolve(), folders[-1].resolve()
    if first in last.parents or last in first.parents:
        raise EffdetError(f"{label_dir}: the label and image directories must be the same "
                          "folder or separate ones, not one inside the other")
    return folders


def _temp_folder(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder.parent, re.escape(folder.name))  # left by a killed run
    temp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    return temp


def _replace_folder(temp: Path, folder: Path) -> None:
    """Rename the finished `temp` onto `folder`, moving an earlier one out of the way first."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(temp, folder)
    shutil.rmtree(old, ignore_errors=True)


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
        with open_image(path) as image:
            width, height = image.size  # from the header, before any pixel is decoded
            if width * height > MAX_IMAGE_PIXELS:
                log.warning("skipping %s: %dx%d pixels is over the %d-pixel limit", path, width,
                            height, MAX_IMAGE_PIXELS)
                return None
            image.load()
            return _Loaded(path, image.convert("RGB"), image.format)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("skipping %s: not a readable image (%s)", path, exc)
        return None


def _write_outputs(item: _Loaded, found: Detections, names: Mapping[int, str],
                   output_dir: Path, label_file: Path | None) -> None:
    labels = [names.get(int(c), f"class_{int(c)}") for c in found.classes]
    annotated = draw_detections(item.image, found, labels)
    with writing(output_dir / item.path.name):
        annotated.save(output_dir / item.path.name, format=item.format or "PNG",
                       **_save_options(item.format))
    if label_file is not None:
        write_kitti(label_file,
                    [format_kitti_line(label, *map(float, box), float(score))
                     for label, box, score in zip(labels, found.boxes, found.scores)])


def _save_options(fmt: str | None) -> dict[str, int]:
    return {"quality": 95} if fmt == "JPEG" else {}
