"""EfficientDet training losses: sigmoid focal loss for classes, Huber loss for box offsets.

All losses are computed in float32 whatever the model's compute dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from effdet.anchors import IGNORE

ALPHA = 0.25
GAMMA = 1.5
HUBER_DELTA = 0.1
BOX_LOSS_WEIGHT = 50.0


def focal_loss(logits: tf.Tensor, targets: tf.Tensor, alpha: float = ALPHA, gamma: float = GAMMA,
               label_smoothing: float = 0.0) -> tf.Tensor:
    """Elementwise sigmoid focal loss (Lin et al. 2017); `targets` are one-hot in {0, 1}."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.cast(targets, tf.float32)
    prob = tf.sigmoid(logits)
    p_t = targets * prob + (1 - targets) * (1 - prob)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    modulator = tf.pow(1.0 - p_t, gamma)
    # As in the reference, smoothing changes the cross-entropy target but not the modulator.
    smoothed = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=smoothed, logits=logits)
    return alpha_t * modulator * ce


def huber_loss(predictions: tf.Tensor, targets: tf.Tensor, delta: float = HUBER_DELTA) -> tf.Tensor:
    """Elementwise Huber loss: 0.5 x^2 for |x| <= delta, else delta * (|x| - delta / 2)."""
    error = tf.abs(tf.cast(predictions, tf.float32) - tf.cast(targets, tf.float32))
    quadratic = tf.minimum(error, delta)
    return 0.5 * quadratic ** 2 + delta * (error - quadratic)


def detection_loss(class_outputs: Sequence[tf.Tensor], box_outputs: Sequence[tf.Tensor],
                   labels: Mapping[str, tf.Tensor], levels: Sequence[int], num_classes: int, *,
                   alpha: float = ALPHA, gamma: float = GAMMA, delta: float = HUBER_DELTA,
                   box_loss_weight: float = BOX_LOSS_WEIGHT,
                   label_smoothing: float = 0.0,
                   num_positives: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """Batch loss from the network outputs and batched `anchors.assign_targets` labels.

    Focal loss is divided by (positives in the batch + 1); the box loss, counted on positive
    anchors only, by 4 x that same normaliser. `num_positives` replaces the batch's count: a
    replica passes the global batch's, so the replicas' losses add up to the global batch's.
    Returns float32 scalars "total_loss", "cls_loss", "box_loss" (total = cls +
    box_loss_weight * box).
    """
    if num_positives is None:
        num_positives = tf.reduce_sum(tf.cast(labels["num_positives"], tf.float32))
    normalizer = num_positives + 1.0
    cls_sum = tf.constant(0.0)
    box_sum = tf.constant(0.0)
    for level, cls_out, box_out in zip(levels, class_outputs, box_outputs):
        cls_targets = tf.cast(labels[f"cls_targets_{level}"], tf.int32)  # [B, H, W, A]
        logits = tf.reshape(tf.cast(cls_out, tf.float32),
                            tf.concat([tf.shape(cls_targets), [num_classes]], 0))
        loss = focal_loss(logits, tf.one_hot(cls_targets, num_classes), alpha, gamma,
                          label_smoothing)
        cls_sum += tf.reduce_sum(loss * tf.cast(cls_targets != IGNORE, tf.float32)[..., None])

        box_targets = tf.cast(labels[f"box_targets_{level}"], tf.float32)
        positive = tf.repeat(tf.cast(cls_targets >= 0, tf.float32), 4, axis=-1)
        box_sum += tf.reduce_sum(huber_loss(box_out, box_targets, delta) * positive)
    cls_loss = cls_sum / normalizer
    box_loss = box_sum / (normalizer * 4.0)
    return {"total_loss": cls_loss + box_loss_weight * box_loss, "cls_loss": cls_loss,
            "box_loss": box_loss}
