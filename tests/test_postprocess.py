import numpy as np
import pytest
import tensorflow as tf

from effdet.anchors import anchors_for
from effdet.box_coder import encode
from effdet.postprocess import batched_nms, postprocess
from effdet.spec.config import ModelConfig


def np_iou(box, boxes):
    ih = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iw = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ih * iw
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(box) + area(boxes) - inter)


def np_nms(boxes, scores, classes, max_det, min_score, method, iou_thr=0.5, sigma=0.5):
    """Textbook per-class greedy NMS, one class at a time, then merged by score."""
    picked = []
    for c in np.unique(classes):
        idx = np.nonzero(classes == c)[0]
        live = scores[idx].astype(np.float64).copy()
        while len(picked) < 10 * max_det:
            j = np.argmax(live)
            if live[j] <= min_score:
                break
            picked.append((live[j], idx[j]))
            iou = np_iou(boxes[idx[j]], boxes[idx])
            live *= np.where(iou > iou_thr, 0.0, 1.0) if method == "hard" else np.exp(-0.5 * iou ** 2 / sigma)
            live[j] = 0
    picked.sort(key=lambda p: -p[0])
    return picked[:max_det]


def _random_case(rng, n, num_classes=3):
    yx = rng.uniform(0, 200, (n, 2))
    hw = rng.uniform(10, 80, (n, 2))
    boxes = np.concatenate([yx, yx + hw], 1).astype(np.float32)
    return boxes, rng.uniform(size=n).astype(np.float32), rng.integers(1, num_classes + 1, n)


@pytest.mark.parametrize("method", ["hard", "gaussian"])
def test_batched_nms_matches_numpy_reference(method):
    rng = np.random.default_rng(3)
    cases = [_random_case(rng, 300) for _ in range(3)]
    boxes, scores, classes = (np.stack(x) for x in zip(*cases))
    out_boxes, out_scores, out_classes, counts = batched_nms(
        boxes, scores, classes.astype(np.int32), max_detections=40, min_score=0.05, method=method)
    for b in range(3):
        ref = np_nms(boxes[b], scores[b], classes[b], 40, 0.05, method)
        n = counts[b].numpy()
        assert n == len(ref)
        np.testing.assert_allclose(out_scores[b, :n], [s for s, _ in ref], rtol=1e-5)
        np.testing.assert_array_equal(out_classes[b, :n], classes[b][[i for _, i in ref]])
        np.testing.assert_allclose(out_boxes[b, :n], boxes[b][[i for _, i in ref]])
        assert (out_scores[b, n:].numpy() == 0).all()


def test_postprocess_outputs_tao_tensors_in_original_pixels():
    config = ModelConfig()
    anchors = anchors_for(config, (128, 128))
    num_classes = 4
    counts = anchors.level_counts()
    # One confident detection: class 2 on anchor 40, box offset so that it decodes to `target`.
    target = np.array([20.0, 30.0, 70.0, 90.0], np.float32)
    logits = np.full((2, sum(counts), num_classes), -10.0, np.float32)
    logits[:, 40, 1] = 5.0
    codes = np.zeros((2, sum(counts), 4), np.float32)
    codes[:, 40] = encode(target, anchors.boxes[40]).numpy()
    cls_out, box_out, start = [], [], 0
    for level, count in zip(anchors.levels, counts):
        h, w = anchors.level_shapes[level]
        cls_out.append(tf.reshape(logits[:, start:start + count], [2, h, w, -1]))
        box_out.append(tf.reshape(codes[:, start:start + count], [2, h, w, -1]))
        start += count
    out = postprocess(cls_out, box_out, anchors, num_classes, max_detections=5, min_score=0.4,
                      nms_method="hard", image_scales=tf.constant([1.0, 2.0]),
                      image_sizes=tf.constant([[128, 128], [256, 150]]))
    assert out["num_detections"].shape == (2, 1) and out["num_detections"].dtype == tf.int32
    assert out["detection_boxes"].shape == (2, 5, 4)
    assert out["detection_classes"].dtype == tf.int32
    np.testing.assert_array_equal(out["num_detections"].numpy()[:, 0], [1, 1])
    np.testing.assert_array_equal(out["detection_classes"].numpy()[:, 0], [2, 2])
    np.testing.assert_allclose(out["detection_scores"].numpy()[:, 0], 1 / (1 + np.exp(-5)), rtol=1e-5)
    np.testing.assert_allclose(out["detection_boxes"].numpy()[0, 0], target, atol=1e-3)
    # Scaled by 2 and clipped to the original 256 x 150 image.
    np.testing.assert_allclose(out["detection_boxes"].numpy()[1, 0], [40, 60, 140, 150], atol=1e-3)
