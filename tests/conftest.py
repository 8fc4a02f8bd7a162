"""Shared fixtures: the vendored BCCD data and a builder for tiny COCO datasets."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BCCD = REPO / "data" / "bccd"


def pytest_configure(config: pytest.Config) -> None:
    # pycocotools 2.0.11's Cython decode calls np.array(copy=False) on an object without a
    # numpy-2 __array__ signature; harmless, and one warning per mask floods the report.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    )


# The slowest modules (serial seconds on a quiet 2-core machine, 2026-12-02), run first: `make
# test` gives each of its two workers a whole module at a time, and one of these started last
# kept one worker busy minutes after the other had finished.
SLOWEST_FIRST = ("test_train.py", "test_workflow_dag.py", "test_learning.py",  # 529, 310, 300
                 "test_workflow_dvc.py", "test_reproducible.py", "test_prune.py")  # 293, 242, 190


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep order


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    return BCCD


@pytest.fixture(scope="session")
def make_jpeg() -> Callable[..., bytes]:
    return jpeg_bytes


@pytest.fixture(scope="session")
def tree_hashes() -> Callable[[Path], dict[str, str]]:
    return sha256_tree


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> bytes:
    """A small noisy JPEG (noise keeps the encoder from making a trivially tiny file)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format="JPEG", quality=90)
    return out.getvalue()


def sha256_tree(directory: Path) -> dict[str, str]:
    """File name → sha256 for every file in `directory` (hidden ones included)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@dataclass
class TinyCoco:
    """A COCO dataset written to disk on `write()`; edit its lists first to make it bad."""

    root: Path
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(
        default_factory=lambda: [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}]
    )

    @property
    def image_dir(self) -> Path:
        return self.root / "images"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def add_image(self, data: bytes, width: int = 64, height: int = 48, name: str | None = None) -> int:
        image_id = len(self.images) + 1
        name = name or f"img{image_id}.jpg"
        self.image_dir.mkdir(parents=True, exist_ok=True)
        (self.image_dir / name).write_bytes(data)
        self.images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        return image_id

    def add_box(self, image_id: int, bbox: list[float], category_id: int = 1, **extra: Any) -> int:
        ann_id = 100 + len(self.annotations)
        x, y, w, h = bbox
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
               "area": w * h, "iscrowd": 0, "segmentation": [polygon]}
        ann.update(extra)
        self.annotations.append(ann)
        return ann_id

    def write(self, name: str = "train.json") -> Path:
        path = self.root / name
        doc = {"images": self.images, "annotations": self.annotations, "categories": self.categories}
        path.write_text(json.dumps(doc))
        return path


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Callable[[int], TinyCoco]:
    """tiny_coco(n): n 64x48 JPEG images, image k with one 'cat' box [4k, 4, 20, 16]."""

    def make(n: int = 3) -> TinyCoco:
        coco = TinyCoco(tmp_path)
        for k in range(1, n + 1):
            image_id = coco.add_image(jpeg_bytes(seed=k))
            coco.add_box(image_id, [4.0 * k, 4.0, 20.0, 16.0])
        return coco

    return make


@pytest.fixture(autouse=True)
def _restore_op_determinism():
    """Training switches TensorFlow's global op determinism on; XLA tests need it off."""
    from tensorflow.python.framework import config as tf_framework_config

    before = tf_framework_config.is_op_determinism_enabled()
    yield
    if tf_framework_config.is_op_determinism_enabled() != before:
        if before:
            tf_framework_config.enable_op_determinism()
        else:
            tf_framework_config.disable_op_determinism()
