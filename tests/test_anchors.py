import numpy as np
import pytest
import tensorflow as tf

from effdet.anchors import BACKGROUND, anchors_for, assign_targets, generate_anchors
from effdet.box_coder import decode
from effdet.spec.config import ModelConfig

ASPECTS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def test_d0_anchor_count_and_level_layout():
    anchors = anchors_for(ModelConfig(), (512, 512))
    assert anchors.boxes.shape == (49104, 4)
    assert anchors.level_shapes == {3: (64, 64), 4: (32, 32), 5: (16, 16), 6: (8, 8), 7: (4, 4)}
    assert anchors.level_counts() == [36864, 9216, 2304, 576, 144]


def test_first_anchors_at_each_level_match_hand_computed_values():
    anchors = anchors_for(ModelConfig(), (512, 512))
    starts = np.cumsum([0] + anchors.level_counts()[:-1])
    for level, start in zip(range(3, 8), starts):
        stride = 2.0 ** level
        c = stride / 2
        first = anchors.boxes[start:start + 9]
        for octave in range(3):
            base = 4.0 * stride * 2 ** (octave / 3)
            for a, (w, h) in enumerate(ASPECTS):
                half_h, half_w = base * h / 2, base * w / 2
                np.testing.assert_allclose(first[octave * 3 + a],
                                           [c - half_h, c - half_w, c + half_h, c + half_w],
                                           rtol=1e-6)
    # Spot values: level 3, (1.4, 0.7) is wider than tall; level 7 square anchor.
    np.testing.assert_allclose(anchors.boxes[1], [-7.2, -18.4, 15.2, 26.4], rtol=1e-6)
    np.testing.assert_allclose(anchors.boxes[starts[4]], [-192, -192, 320, 320])


def test_second_location_moves_along_x_and_non_square_sizes():
    anchors = generate_anchors((384, 640), 3, 7, 3, ASPECTS, 4.0)
    assert anchors.level_shapes == {3: (48, 80), 4: (24, 40), 5: (12, 20), 6: (6, 10), 7: (3, 5)}
    np.testing.assert_allclose(anchors.boxes[9] - anchors.boxes[0], [0, 8, 0, 8])
    np.testing.assert_allclose(anchors.boxes[80 * 9] - anchors.boxes[0], [8, 0, 8, 0])


def _small_anchors():
    return anchors_for(ModelConfig(), (128, 128))


def test_box_equal_to_an_anchor_is_positive_with_zero_offsets():
    anchors = _small_anchors()
    gt = anchors.boxes[[100]]  # level 3, location 11, anchor 1
    targets = assign_targets(gt, [3], anchors)
    cls = targets["cls_targets_3"].numpy().reshape(-1)
    assert cls[100] == 2  # 0-based class
    np.testing.assert_allclose(targets["box_targets_3"].numpy().reshape(-1, 4)[100], 0, atol=1e-6)
    assert targets["num_positives"].numpy() == sum(
        (targets[f"cls_targets_{lv}"].numpy() >= 0).sum() for lv in range(3, 8))


def test_every_box_is_force_matched_and_padding_is_ignored():
    anchors = _small_anchors()
    tiny = [50.0, 50.0, 52.0, 53.0]  # far below IoU 0.5 with every anchor
    gt = tf.constant([tiny, [0, 0, 0, 0], [-1, -1, -1, -1]])
    targets = assign_targets(gt, tf.constant([1, -1, 0]), anchors)
    assert targets["num_positives"].numpy() == 1
    cls = np.concatenate([targets[f"cls_targets_{lv}"].numpy().reshape(-1) for lv in range(3, 8)])
    codes = np.concatenate([targets[f"box_targets_{lv}"].numpy().reshape(-1, 4)
                            for lv in range(3, 8)])
    (pos,) = np.nonzero(cls != BACKGROUND)
    assert cls[pos[0]] == 0
    np.testing.assert_allclose(decode(codes[pos[0]], anchors.boxes[pos[0]]), tiny, atol=1e-4)


def test_assign_targets_matches_numpy_reference_inside_tf_data():
    anchors = _small_anchors()
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 90, (6, 2))
    hw = rng.uniform(8, 60, (6, 2))
    gt = np.concatenate([yx, yx + hw], 1).astype(np.float32)
    classes = np.array([1, 2, 3, 4, -1, -1], np.int32)
    gt[4:] = -1
    ds = tf.data.Dataset.from_tensors((gt, classes)).map(lambda b, c: assign_targets(b, c, anchors))
    targets = next(iter(ds))
    cls = np.concatenate([targets[f"cls_targets_{lv}"].numpy().reshape(-1) for lv in range(3, 8)])

    def iou(a, b):
        ih = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
        iw = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
        inter = ih * iw
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
        return inter / (area(a)[:, None] + area(b)[None, :] - inter)

    m = iou(gt[:4], anchors.boxes)
    expected = np.where(m.max(0) >= 0.5, classes[m.argmax(0)] - 1, -1)
    expected[m.argmax(1)] = classes[:4] - 1
    np.testing.assert_array_equal(cls, expected)


@pytest.mark.parametrize("bad", [0, 5])
def test_no_boxes_gives_all_background(bad):
    anchors = _small_anchors()
    targets = assign_targets(tf.zeros([bad, 4]), -tf.ones([bad], tf.int32), anchors)
    assert targets["num_positives"].numpy() == 0
    assert (targets["cls_targets_3"].numpy() == BACKGROUND).all()
