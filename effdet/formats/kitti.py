"""KITTI label lines as TAO's inference writes them.

`class 0.00 0 0.00 x1 y1 x2 y2 0.00 0.00 0.00 0.00 0.00 0.00 0.00 score`: truncation,
occlusion, alpha and the 3-D fields are zero; box corners in original image pixels with 2
decimals; the score (the field after the 3-D ones, as in KITTI result files) with 4 decimals
so that distinct confidences near a threshold stay distinguishable. KITTI is whitespace
separated, so whitespace inside a class name becomes '_' (a name with spaces would shift
every following field for any KITTI reader).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from effdet.formats.atomic import atomic_write_bytes

_WHITESPACE = re.compile(r"\s+")


def kitti_class_name(name: str) -> str:
    return _WHITESPACE.sub("_", name.strip()) or "_"


def format_kitti_line(name: str, x1: float, y1: float, x2: float, y2: float,
                      score: float) -> str:
    return (f"{kitti_class_name(name)} 0.00 0 0.00 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} "
            f"0.00 0.00 0.00 0.00 0.00 0.00 0.00 {score:.4f}")


def write_kitti(path: str | Path, lines: Iterable[str]) -> None:
    """Write one image's label file atomically (an image without detections: an empty file)."""
    atomic_write_bytes(path, "".join(f"{line}\n" for line in lines).encode())
