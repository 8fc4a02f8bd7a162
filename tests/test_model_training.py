"""One optimisation step under XLA and under mixed precision, on a tiny network."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effdet.anchors import anchors_for, assign_targets
from effdet.losses import detection_loss
from effdet.model import build_efficientdet, get_variant
from effdet.spec.config import ModelConfig

TINY = dict(fpn_num_filters=16, fpn_cell_repeats=1, box_class_repeats=1, width_coefficient=0.25,
            depth_coefficient=0.25)
SIZE = (128, 128)
NUM_CLASSES = 3


def _batch():
    anchors = anchors_for(ModelConfig(), SIZE)
    boxes = tf.constant([[10.0, 20.0, 60.0, 90.0], [70.0, 70.0, 120.0, 110.0]])
    targets = assign_targets(boxes, tf.constant([1, 3]), anchors)
    labels = {k: tf.stack([v, v]) for k, v in targets.items()}
    return tf.random.stateless_uniform([2, *SIZE, 3], seed=(1, 2)), labels


def _train_step(jit_compile):
    model = build_efficientdet(ModelConfig(), NUM_CLASSES, SIZE,
                               variant=get_variant("efficientdet-d0").replace(**TINY))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)

    @tf.function(jit_compile=jit_compile)
    def step(images, labels):
        with tf.GradientTape() as tape:
            class_out, box_out = model(images, training=True)
            losses = detection_loss(class_out, box_out, labels, range(3, 8), NUM_CLASSES)
            loss = losses["total_loss"]
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return losses, class_out[0]

    images, labels = _batch()
    losses, first_output = step(images, labels)
    assert first_output.dtype == tf.float32
    for value in losses.values():
        assert value.dtype == tf.float32 and np.isfinite(value.numpy())
    second, _ = step(images, labels)
    assert np.isfinite(second["total_loss"].numpy())
    assert all(np.isfinite(w.numpy()).all() for w in model.trainable_variables)
    return model


def test_one_training_step_under_xla():
    _train_step(jit_compile=True)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_one_training_step_under_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = _train_step(jit_compile=False)
        assert model.get_layer("stem_conv").compute_dtype == policy.split("_")[1]
        assert model.get_layer("stem_conv").kernel.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
