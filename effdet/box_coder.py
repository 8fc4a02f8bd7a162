"""Faster R-CNN box coding relative to anchors: (ty, tx, th, tw), boxes as [ymin, xmin, ymax, xmax].

No scale factors, as in the reference EfficientDet. Works on any leading shape; `boxes` and
`anchors` broadcast against each other.
"""

from __future__ import annotations

import tensorflow as tf

_EPSILON = 1e-8  # keeps log() finite for degenerate (zero-size) boxes


def _as_float(x: tf.Tensor, like: tf.Tensor | None = None) -> tf.Tensor:
    """float64 stays float64 (exactness checks); everything else computes in float32."""
    x = tf.convert_to_tensor(x)
    dtype = like.dtype if like is not None else (
        x.dtype if x.dtype in (tf.float32, tf.float64) else tf.float32)
    return tf.cast(x, dtype)


def _center_size(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return (ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin


def encode(boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """Boxes [..., 4] -> regression targets [..., 4] = (ty, tx, th, tw)."""
    boxes = _as_float(boxes)
    anchors = _as_float(anchors, like=boxes)
    yc, xc, h, w = _center_size(boxes)
    yca, xca, ha, wa = _center_size(anchors)
    ha, wa, h, w = ha + _EPSILON, wa + _EPSILON, h + _EPSILON, w + _EPSILON
    return tf.stack([(yc - yca) / ha, (xc - xca) / wa, tf.math.log(h / ha), tf.math.log(w / wa)],
                    axis=-1)


def decode(codes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """Regression outputs [..., 4] = (ty, tx, th, tw) -> boxes [..., 4]; inverse of `encode`."""
    codes = _as_float(codes)
    anchors = _as_float(anchors, like=codes)
    yca, xca, ha, wa = _center_size(anchors)
    ha, wa = ha + _EPSILON, wa + _EPSILON
    ty, tx, th, tw = tf.unstack(codes, axis=-1)
    h = tf.exp(th) * ha - _EPSILON
    w = tf.exp(tw) * wa - _EPSILON
    yc = ty * ha + yca
    xc = tx * wa + xca
    return tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
