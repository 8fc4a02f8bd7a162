"""Multi-level anchors and the IoU target assignment that labels them for training.

Anchor order matches the heads' output layout: level by level, then row-major over locations,
then scale octave, then aspect ratio (anchor index = octave * len(aspect_ratios) + aspect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from effdet import box_coder
from effdet.spec.config import ModelConfig

MATCH_THRESHOLD = 0.5
BACKGROUND = -1  # class target of unmatched anchors
IGNORE = -2  # class target of anchors excluded from the loss


def feature_sizes(image_size: tuple[int, int], max_level: int) -> dict[int, tuple[int, int]]:
    """Feature map (height, width) per level 0..max_level, halving with ceil as 'same' conv does."""
    height, width = image_size
    sizes = {0: (height, width)}
    for level in range(1, max_level + 1):
        height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        sizes[level] = (height, width)
    return sizes


@dataclass(frozen=True)
class Anchors:
    boxes: np.ndarray  # [N, 4] float32, [ymin, xmin, ymax, xmax] in input-image pixels
    image_size: tuple[int, int]  # network input (height, width)
    level_shapes: dict[int, tuple[int, int]]  # level -> feature (height, width)
    anchors_per_location: int

    @property
    def levels(self) -> list[int]:
        return sorted(self.level_shapes)

    def level_counts(self) -> list[int]:
        return [h * w * self.anchors_per_location for h, w in
                (self.level_shapes[lv] for lv in self.levels)]


def generate_anchors(image_size: tuple[int, int], min_level: int, max_level: int, num_scales: int,
                     aspect_ratios: Sequence[tuple[float, float]], anchor_scale: float) -> Anchors:
    """Anchors of side anchor_scale * stride * 2**(octave/num_scales), stretched by TAO's (w, h)
    aspect pairs, centred on every feature-map cell."""
    sizes = feature_sizes(image_size, max_level)
    per_level = []
    for level in range(min_level, max_level + 1):
        feat_h, feat_w = sizes[level]
        stride_y, stride_x = image_size[0] / feat_h, image_size[1] / feat_w
        cy = stride_y / 2 + stride_y * np.arange(feat_h)
        cx = stride_x / 2 + stride_x * np.arange(feat_w)
        cx, cy = np.meshgrid(cx, cy)  # [feat_h, feat_w]
        shapes = []
        for octave in range(num_scales):
            for aspect_w, aspect_h in aspect_ratios:
                scale = anchor_scale * 2 ** (octave / num_scales)
                shapes.append((scale * stride_y * aspect_h / 2, scale * stride_x * aspect_w / 2))
        half = np.asarray(shapes)  # [A, 2] half heights/widths
        boxes = np.stack([cy[..., None] - half[:, 0], cx[..., None] - half[:, 1],
                          cy[..., None] + half[:, 0], cx[..., None] + half[:, 1]], axis=-1)
        per_level.append(boxes.reshape(-1, 4))
    return Anchors(np.concatenate(per_level).astype(np.float32), tuple(image_size),
                   {lv: sizes[lv] for lv in range(min_level, max_level + 1)},
                   num_scales * len(aspect_ratios))


def anchors_for(model_config: ModelConfig, image_size: tuple[int, int]) -> Anchors:
    return generate_anchors(image_size, model_config.min_level, model_config.max_level,
                            model_config.num_scales, model_config.aspect_ratios,
                            model_config.anchor_scale)


def pairwise_iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """IoU of [..., M, 4] against [..., N, 4] -> [..., M, N]."""
    ya1, xa1, ya2, xa2 = tf.split(boxes_a[..., :, None, :], 4, axis=-1)
    yb1, xb1, yb2, xb2 = tf.split(boxes_b[..., None, :, :], 4, axis=-1)
    inter = (tf.maximum(tf.minimum(ya2, yb2) - tf.maximum(ya1, yb1), 0.0)
             * tf.maximum(tf.minimum(xa2, xb2) - tf.maximum(xa1, xb1), 0.0))
    union = (ya2 - ya1) * (xa2 - xa1) + (yb2 - yb1) * (xb2 - xb1) - inter
    return tf.squeeze(inter / tf.maximum(union, 1e-8), -1)


def assign_targets(gt_boxes: tf.Tensor, gt_classes: tf.Tensor,
                   anchors: Anchors) -> dict[str, tf.Tensor]:
    """Label one image's anchors; pure TF, so it runs inside `tf.data.Dataset.map`.

    gt_boxes: [M, 4] float pixels [ymin, xmin, ymax, xmax]; gt_classes: [M] label ids 1..C.
    Rows with class <= 0 or an empty box are padding and ignored. Anchors with IoU >= 0.5 are
    positive, the rest background, and each real box is also matched to its best anchor.
    Returns "cls_targets_{l}" [H, W, A] int32 (0-based class, -1 background) and
    "box_targets_{l}" [H, W, A*4] float32 per level, and "num_positives" float32 scalar.
    """
    # A trailing padding row keeps the gathers below valid for images without boxes.
    gt_boxes = tf.concat([tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4]), tf.zeros([1, 4])], 0)
    gt_classes = tf.concat([tf.reshape(tf.cast(gt_classes, tf.int32), [-1]), [0]], 0)
    anchor_boxes = tf.constant(anchors.boxes)
    num_anchors = anchors.boxes.shape[0]
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    valid = (gt_classes > 0) & (area > 0)

    iou = pairwise_iou(gt_boxes, anchor_boxes)  # [M, N]
    iou = tf.where(valid[:, None], iou, -1.0)
    best_gt = tf.argmax(iou, axis=0, output_type=tf.int32)  # [N]
    matched = tf.reduce_max(iou, axis=0) >= MATCH_THRESHOLD  # never empty: padding row
    # Force-match every real box to its highest-IoU anchor, even below the threshold.
    best_anchor = tf.argmax(iou, axis=1, output_type=tf.int32)  # [M]
    forced = tf.one_hot(best_anchor, num_anchors, dtype=tf.int32) * tf.cast(valid, tf.int32)[:, None]
    is_forced = tf.reduce_any(forced > 0, axis=0)
    best_gt = tf.where(is_forced, tf.argmax(forced, axis=0, output_type=tf.int32), best_gt)
    positive = matched | is_forced

    cls = tf.where(positive, tf.gather(gt_classes, best_gt) - 1, BACKGROUND)
    codes = box_coder.encode(tf.gather(gt_boxes, best_gt), anchor_boxes)
    codes = tf.where(positive[:, None], codes, 0.0)

    targets: dict[str, tf.Tensor] = {}
    start = 0
    for level, count in zip(anchors.levels, anchors.level_counts()):
        h, w = anchors.level_shapes[level]
        a = anchors.anchors_per_location
        targets[f"cls_targets_{level}"] = tf.reshape(cls[start:start + count], [h, w, a])
        targets[f"box_targets_{level}"] = tf.reshape(codes[start:start + count], [h, w, a * 4])
        start += count
    targets["num_positives"] = tf.reduce_sum(tf.cast(positive, tf.float32))
    return targets
