"""Image preprocessing shared by training, evaluation, inference and export.

Conventions (the same everywhere, so detections map back identically):
  * images enter as RGB with values 0..255 (any real/int dtype) and leave float32,
    normalised per channel as `(x - MEAN_RGB) / STDDEV_RGB` (ImageNet statistics x 255, as
    automl's EfficientDet);
  * `resize_and_pad` keeps the aspect ratio, anchors the image at the top-left corner and
    pads bottom/right with zeros. Callers normalise first, so the padding is the mean colour
    (0 after normalisation), exactly as automl does;
  * `scale` is resized / original: network-input pixels = original pixels * scale, so
    detections map back to the original image by dividing by scale.

Everything here is plain TF ops (no py_function) so it traces into tf.function, tf.data and
tf2onnx graphs.
"""

from __future__ import annotations

import tensorflow as tf

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize_image(image: tf.Tensor) -> tf.Tensor:
    """RGB 0..255 [..., 3] -> float32 zero-mean, unit-variance per channel."""
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def fit_size(height: tf.Tensor, width: tf.Tensor,
             target: tuple[float | tf.Tensor, float | tf.Tensor],
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Largest (scale, resized_h, resized_w) with the aspect kept that fits inside `target`.

    Sizes are rounded (never floored: h * (H / h) can land a hair below H in float32) and
    capped to the target (at least 1 pixel), so one side always fills an integer target.
    """
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    scale = tf.minimum(target[0] / height, target[1] / width)
    return scale, _scaled_side(height, scale, target[0]), _scaled_side(width, scale, target[1])


def _scaled_side(side: tf.Tensor, scale: tf.Tensor, limit: float | tf.Tensor) -> tf.Tensor:
    scaled = tf.cast(tf.round(side * scale), tf.int32)
    return tf.clip_by_value(scaled, 1, tf.maximum(tf.cast(limit, tf.int32), 1))


def pad_to(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Zero-pad an image no larger than `image_size` at the bottom/right to exactly that size."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[0, image_size[0] - shape[0]], [0, image_size[1] - shape[1]], [0, 0]])
    return tf.ensure_shape(padded, [image_size[0], image_size[1], 3])


def resize_and_pad(image: tf.Tensor, image_size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Fit `image` [h, w, 3] inside image_size=(H, W) keeping aspect, then pad to (H, W).

    Returns (float32 [H, W, 3], scale) with scale = resized / original (a float32 scalar).
    Bilinear resizing, as automl; pass the normalised image so the padding is the mean colour.
    """
    shape = tf.shape(image)
    scale, height, width = fit_size(shape[0], shape[1], image_size)
    resized = tf.image.resize(image, tf.stack([height, width]), method="bilinear")
    return pad_to(resized, image_size), scale
