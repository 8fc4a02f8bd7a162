"""Detections from raw network outputs: decode, pre-NMS top-k, per-class NMS, map to the image.

Batched and vectorised: one greedy selection loop of `max_detections` steps runs over the whole
batch at once, handling every class together (suppression only acts within a class).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from effdet import box_coder
from effdet.anchors import Anchors, pairwise_iou

PRE_NMS_TOPK = 5000
NMS_IOU_THRESHOLD = 0.5
SOFT_NMS_SIGMA = 0.5
NMS_METHODS = ("hard", "gaussian")
# The logit given to anchors whose box is empty: sigmoid() of it is exactly 0, under any score
# floor, and it stays finite for ONNX Runtime and TensorRT.
EMPTY_LOGIT = -1e9


def flatten_outputs(class_outputs: Sequence[tf.Tensor], box_outputs: Sequence[tf.Tensor],
                    num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-level head outputs -> class logits [B, N, C] and box codes [B, N, 4], anchor order.

    N is static when the levels' sizes are: the reshapes then need no shape of their input at
    run time, and code after them can size its top-k by N.
    """
    def rows(output: tf.Tensor, width: int) -> tf.Tensor:
        pairs = output.shape[1:].num_elements()
        shape = [-1, pairs // width, width] if pairs else [tf.shape(output)[0], -1, width]
        return tf.reshape(tf.cast(output, tf.float32), shape)

    return (tf.concat([rows(c, num_classes) for c in class_outputs], axis=1),
            tf.concat([rows(b, 4) for b in box_outputs], axis=1))


def decode_clipped(codes: tf.Tensor, anchors: Anchors) -> tf.Tensor:
    """Box codes [B, N, 4] of every anchor -> boxes [B, N, 4] clipped to the network input."""
    height, width = anchors.image_size
    boxes = box_coder.decode(codes, tf.constant(anchors.boxes))
    return tf.clip_by_value(boxes, 0.0, tf.constant([height, width, height, width], tf.float32))


def empty_boxes(boxes: tf.Tensor) -> tf.Tensor:
    """[B, N] true where the box [B, N, 4] has no area."""
    return (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])


def mask_empty(logits: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Logits [B, N, C] with anchors whose box [B, N, 4] has no area set to EMPTY_LOGIT.

    Such boxes lie outside the network input (clipped to its edge): dropped before top-k and
    NMS, they can neither take a detection slot nor suppress a real box.
    """
    return tf.where(empty_boxes(boxes)[..., None], tf.constant(EMPTY_LOGIT, logits.dtype),
                    logits)


def _drop_empty(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor,
                counts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Remove detections left with no area by clipping to the image (boxes in the padding),
    keeping the others' order and the zero padding after them."""
    slots = tf.range(tf.shape(scores)[1])[None, :]
    keep = ((slots < counts[:, None]) & (boxes[..., 2] > boxes[..., 0])
            & (boxes[..., 3] > boxes[..., 1]))
    order = tf.argsort(tf.cast(~keep, tf.int32), axis=1, stable=True)
    kept = tf.gather(keep, order, batch_dims=1)
    boxes = tf.gather(boxes, order, batch_dims=1) * tf.cast(kept, tf.float32)[..., None]
    scores = tf.gather(scores, order, batch_dims=1) * tf.cast(kept, tf.float32)
    classes = tf.gather(classes, order, batch_dims=1) * tf.cast(kept, tf.int32)
    return boxes, scores, classes, tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)


def _suppression_weights(iou: tf.Tensor, same_class: tf.Tensor, method: str,
                         iou_threshold: float, sigma: float) -> tf.Tensor:
    if method == "hard":
        decay = tf.where(iou > iou_threshold, 0.0, 1.0)
    else:
        # Gaussian soft-NMS with TensorFlow's convention: exp(-0.5 * iou^2 / sigma).
        decay = tf.exp(-0.5 * tf.square(iou) / sigma)
    return tf.where(same_class, decay, 1.0)


def batched_nms(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, max_detections: int,
                min_score: float, method: str = "hard", iou_threshold: float = NMS_IOU_THRESHOLD,
                sigma: float = SOFT_NMS_SIGMA) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Greedy class-aware NMS over candidates boxes [B, K, 4], scores [B, K], classes [B, K].

    Repeatedly takes the highest (possibly decayed) score above `min_score` and suppresses
    (hard) or decays (gaussian) same-class candidates by IoU with it. Returns boxes
    [B, D, 4], scores [B, D], classes [B, D] (zero-padded, best first) and counts [B] int32.
    """
    if method not in NMS_METHODS:
        raise ValueError(f"nms method must be one of {NMS_METHODS}, got {method!r}")
    batch = tf.shape(scores)[0]
    rows = tf.range(batch)

    def step(i, live, out_boxes, out_scores, out_classes, counts):
        best = tf.argmax(live, axis=1, output_type=tf.int32)
        index = tf.stack([rows, best], axis=1)
        best_score = tf.gather_nd(live, index)
        best_box = tf.gather_nd(boxes, index)
        best_class = tf.gather_nd(classes, index)
        keep = best_score > min_score
        # Write column i of the [B, D] outputs (a one-hot add keeps this XLA-friendly).
        slot = tf.one_hot(i, max_detections)[None, :] * tf.cast(keep, tf.float32)[:, None]
        out_boxes += slot[:, :, None] * best_box[:, None, :]
        out_scores += slot * best_score[:, None]
        out_classes += tf.cast(slot, tf.int32) * best_class[:, None]
        counts += tf.cast(keep, tf.int32)

        iou = pairwise_iou(best_box[:, None, :], boxes)[:, 0, :]  # [B, K]
        weights = _suppression_weights(iou, classes == best_class[:, None], method,
                                       iou_threshold, sigma)
        live = tf.tensor_scatter_nd_update(live * weights, index, tf.zeros_like(best_score))
        return i + 1, live, out_boxes, out_scores, out_classes, counts

    def more(i, live, *_):
        return (i < max_detections) & tf.reduce_any(live > min_score)

    boxes = tf.cast(boxes, tf.float32)
    classes = tf.cast(classes, tf.int32)
    _, _, out_boxes, out_scores, out_classes, counts = tf.while_loop(more, step, (
        tf.constant(0), tf.cast(scores, tf.float32), tf.zeros([batch, max_detections, 4]),
        tf.zeros([batch, max_detections]), tf.zeros([batch, max_detections], tf.int32),
        tf.zeros([batch], tf.int32)))
    return out_boxes, out_scores, out_classes, counts


def postprocess(class_outputs: Sequence[tf.Tensor], box_outputs: Sequence[tf.Tensor],
                anchors: Anchors, num_classes: int, *, max_detections: int = 100,
                min_score: float = 0.3, pre_nms_topk: int = PRE_NMS_TOPK,
                nms_method: str = "gaussian", iou_threshold: float = NMS_IOU_THRESHOLD,
                sigma: float = SOFT_NMS_SIGMA, image_scales: tf.Tensor | None = None,
                image_sizes: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """The four outputs of TAO's exported models, from the network's per-level outputs.

    image_scales: [B] or [B, 2] (y, x) original/network-input size ratio; the network input
    is the resized image padded at the bottom/right, so boxes map back by this scale alone.
    image_sizes: [B, 2] original (height, width), to clip boxes that reach into the padding.
    Returns "num_detections" [B, 1] int32, "detection_boxes" [B, D, 4] float32 pixels
    [ymin, xmin, ymax, xmax], "detection_scores" [B, D] float32 and "detection_classes"
    [B, D] int32 label ids (head channel + 1); entries past num_detections are zero.
    Boxes without area never appear: in the network input they are dropped before top-k,
    once clipped to image_sizes after NMS.
    """
    logits, codes = flatten_outputs(class_outputs, box_outputs, num_classes)
    all_boxes = decode_clipped(codes, anchors)
    logits = mask_empty(logits, all_boxes)
    batch = tf.shape(logits)[0]
    flat = tf.reshape(logits, [batch, -1])
    k = min(pre_nms_topk, int(anchors.boxes.shape[0]) * num_classes)
    top_logits, top_index = tf.math.top_k(flat, k=k, sorted=False)
    anchor_index = top_index // num_classes
    classes = top_index % num_classes + 1
    boxes = tf.gather(all_boxes, anchor_index, batch_dims=1)  # [B, k, 4]

    boxes, scores, classes, counts = batched_nms(
        boxes, tf.sigmoid(top_logits), classes, max_detections, min_score, nms_method,
        iou_threshold, sigma)
    if image_scales is not None:
        scale = tf.cast(image_scales, tf.float32)
        scale = tf.tile(scale[:, None], [1, 4]) if scale.shape.rank == 1 else tf.tile(scale, [1, 2])
        boxes = boxes * scale[:, None, :]
    if image_sizes is not None:
        size = tf.cast(image_sizes, tf.float32)
        boxes = tf.minimum(boxes, tf.tile(size, [1, 2])[:, None, :])
        boxes, scores, classes, counts = _drop_empty(boxes, scores, classes, counts)
    return {"num_detections": counts[:, None], "detection_boxes": boxes,
            "detection_scores": scores, "detection_classes": classes}

