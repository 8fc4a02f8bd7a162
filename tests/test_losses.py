import numpy as np
import tensorflow as tf

from effdet.losses import detection_loss, focal_loss, huber_loss


def np_focal(logits, targets, alpha=0.25, gamma=1.5, smoothing=0.0):
    p = 1 / (1 + np.exp(-logits))
    p_t = targets * p + (1 - targets) * (1 - p)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    y = targets * (1 - smoothing) + 0.5 * smoothing
    ce = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    return alpha_t * (1 - p_t) ** gamma * ce


def np_huber(pred, target, delta=0.1):
    e = np.abs(pred - target)
    return np.where(e <= delta, 0.5 * e ** 2, delta * (e - 0.5 * delta))


def test_focal_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (64, 7)).astype(np.float64)
    targets = (rng.uniform(size=(64, 7)) < 0.3).astype(np.float64)
    for smoothing in (0.0, 0.1):
        got = focal_loss(logits.astype(np.float32), targets, label_smoothing=smoothing).numpy()
        np.testing.assert_allclose(got, np_focal(logits, targets, smoothing=smoothing), atol=1e-6)


def test_huber_loss_matches_numpy():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(0, 0.2, (2, 500))
    got = huber_loss(pred.astype(np.float32), target.astype(np.float32)).numpy()
    np.testing.assert_allclose(got, np_huber(pred, target), atol=1e-6)


def test_detection_loss_matches_numpy_reference():
    rng = np.random.default_rng(2)
    num_classes, a, batch = 3, 2, 2
    shapes = {3: (4, 4), 4: (2, 2)}
    cls_out, box_out, labels = [], [], {}
    for level, (h, w) in shapes.items():
        cls_out.append(rng.normal(0, 2, (batch, h, w, a * num_classes)).astype(np.float32))
        box_out.append(rng.normal(0, 0.2, (batch, h, w, a * 4)).astype(np.float32))
        labels[f"cls_targets_{level}"] = rng.choice([-2, -1, -1, -1, 0, 1, 2], (batch, h, w, a))
        labels[f"box_targets_{level}"] = rng.normal(0, 0.2, (batch, h, w, a * 4)).astype(np.float32)
    labels["num_positives"] = np.array([3.0, 5.0], np.float32)

    cls_sum = box_sum = 0.0
    for i, level in enumerate(shapes):
        t = labels[f"cls_targets_{level}"]
        onehot = (t[..., None] == np.arange(num_classes)).astype(np.float64)
        logits = cls_out[i].astype(np.float64).reshape(*t.shape, num_classes)
        cls_sum += (np_focal(logits, onehot) * (t != -2)[..., None]).sum()
        mask = np.repeat(t >= 0, 4, axis=-1)
        box_sum += (np_huber(box_out[i].astype(np.float64), labels[f"box_targets_{level}"]) * mask).sum()
    norm = 3 + 5 + 1
    got = detection_loss(cls_out, box_out, {k: tf.constant(v) for k, v in labels.items()},
                         list(shapes), num_classes)
    np.testing.assert_allclose(got["cls_loss"].numpy(), cls_sum / norm, rtol=1e-6)
    np.testing.assert_allclose(got["box_loss"].numpy(), box_sum / (4 * norm), rtol=1e-6)
    np.testing.assert_allclose(got["total_loss"].numpy(),
                               cls_sum / norm + 50 * box_sum / (4 * norm), rtol=1e-6)
