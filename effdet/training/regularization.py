"""Weight decay terms on convolution kernels (L2 as the reference's l2_loss, L1 as |w|)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def decayed_kernels(variables: Sequence[keras.Variable]) -> list[keras.Variable]:
    """Conv, depthwise and pointwise kernels; never biases, BatchNorm or fusion weights."""
    return [v for v in variables if v.path.rsplit("/", 1)[-1].endswith("kernel")]


def weight_decay(kernels: Sequence[keras.Variable], l2: float, l1: float) -> tf.Tensor:
    total = tf.constant(0.0, tf.float32)
    if l2:
        total += l2 * tf.add_n([tf.nn.l2_loss(tf.cast(k.value, tf.float32)) for k in kernels])
    if l1:
        # TAO's efficientdet_tf1 applies an L2 norm under the L1 name; this is a real L1 term.
        total += l1 * tf.add_n([tf.reduce_sum(tf.abs(tf.cast(k.value, tf.float32)))
                                for k in kernels])
    return total
