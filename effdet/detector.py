"""The compiled Keras detector: network forward + post-processing in one graph.

Below both `effdet.tasks` (evaluate) and `effdet.runtimes` (the Keras runtime), which share it.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from effdet.anchors import anchors_for
from effdet.model.saving import Architecture
from effdet.postprocess import postprocess

DetectFunction = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]


def make_detector(model: keras.Model, architecture: Architecture, *, max_detections: int,
                  min_score: float) -> DetectFunction:
    """One compiled graph: network forward + post-processing to original-image boxes.

    detect(images [B,H,W,3], image_scale [B] resized/original, original_size [B,2] (h, w)).
    """
    anchors = anchors_for(architecture.model_config, architecture.image_size)

    @tf.function(reduce_retracing=True)  # the last, smaller batch must not retrace for good
    def detect(images: tf.Tensor, image_scale: tf.Tensor,
               original_size: tf.Tensor) -> dict[str, tf.Tensor]:
        class_outputs, box_outputs = model(images, training=False)
        # postprocess multiplies by original/network-input, the inverse of the pipeline's scale.
        return postprocess(class_outputs, box_outputs, anchors, architecture.head_classes,
                           max_detections=max_detections, min_score=min_score,
                           nms_method="hard",
                           image_scales=1.0 / tf.cast(image_scale, tf.float32),
                           image_sizes=original_size)

    return detect
