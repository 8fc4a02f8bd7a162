"""Read dataset_convert's shards back into plain Python values.

Each example becomes a dict:

    image       bytes   the encoded image exactly as stored
    format      str     "jpeg" or "png"
    height, width  int
    filename, source_id, sha256  str
    boxes       float32 (N, 4)  normalised [ymin, xmin, ymax, xmax] (the training order)
    classes     int64 (N,)      category ids as in the json
    class_text  list[str]
    is_crowd    int64 (N,)
    area        float32 (N,)
    masks       uint8 (N, height, width) of 0/1 — only when the shards carry masks
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from effdet.errors import EffdetError

FEATURES = {
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "image/source_id": tf.io.FixedLenFeature([], tf.string),
    "image/key/sha256": tf.io.FixedLenFeature([], tf.string),
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
    "image/object/mask": tf.io.VarLenFeature(tf.string),
}


def read_examples(pattern: str) -> Iterator[dict[str, Any]]:
    """Every example in the shards matching `pattern`, shards in name order."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise EffdetError(f"{pattern}: no TFRecord files match")
    for serialized in tf.data.TFRecordDataset(files):
        yield _to_python(tf.io.parse_single_example(serialized, FEATURES))


def _to_python(parsed: dict[str, Any]) -> dict[str, Any]:
    def dense(key: str) -> np.ndarray:
        return tf.sparse.to_dense(parsed[key]).numpy()

    def text(key: str) -> str:
        return parsed[key].numpy().decode()

    example: dict[str, Any] = {
        "image": parsed["image/encoded"].numpy(),
        "format": text("image/format"),
        "height": int(parsed["image/height"]),
        "width": int(parsed["image/width"]),
        "filename": text("image/filename"),
        "source_id": text("image/source_id"),
        "sha256": text("image/key/sha256"),
        "boxes": np.stack(
            [dense(f"image/object/bbox/{k}") for k in ("ymin", "xmin", "ymax", "xmax")], axis=-1
        ).astype(np.float32),
        "classes": dense("image/object/class/label"),
        "class_text": [t.decode() for t in dense("image/object/class/text")],
        "is_crowd": dense("image/object/is_crowd"),
        "area": dense("image/object/area"),
    }
    masks = dense("image/object/mask")
    if len(masks):
        example["masks"] = np.stack([np.asarray(Image.open(io.BytesIO(m))) for m in masks])
    return example
