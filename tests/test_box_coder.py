import numpy as np

from effdet.box_coder import decode, encode


def _random_boxes(rng, n):
    yx = rng.uniform(-50, 500, (n, 2))
    hw = rng.uniform(1, 300, (n, 2))
    return np.concatenate([yx, yx + hw], 1).astype(np.float32)


def test_encode_decode_are_inverses():
    rng = np.random.default_rng(1)
    boxes, anchors = _random_boxes(rng, 1000), _random_boxes(rng, 1000)
    codes = rng.normal(0, 1, (1000, 4))
    for dtype, atol in ((np.float64, 1e-5), (np.float32, 1e-4)):
        b, a, c = boxes.astype(dtype), anchors.astype(dtype), codes.astype(dtype)
        np.testing.assert_allclose(decode(encode(b, a), a), b, atol=atol)
        np.testing.assert_allclose(encode(decode(c, a), a), c, atol=atol)


def test_encode_is_ty_tx_th_tw():
    anchor = np.array([0, 0, 10, 20], np.float32)
    box = np.array([5, 10, 25, 30], np.float32)  # centre (15, 20), size 20 x 20
    np.testing.assert_allclose(encode(box, anchor), [1.0, 0.5, np.log(2.0), 0.0], atol=1e-6)
