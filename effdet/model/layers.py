"""Layer construction shared by the backbone, BiFPN and heads.

Every prunable layer is created through `LayerFactory`, which gives it a unique, deterministic
name and lets a `widths` mapping (layer name -> output channels) override its default width, so a
pruned model can be rebuilt from a manifest that records each layer's width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf
from keras import layers, ops

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
FUSION_EPSILON = 1e-4

# EfficientNet's conv initialiser (He-normal over fan-out), as in the reference implementation.
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}


# The EfficientNet backbone's layer names (stem and MBConv stages); TAO's freeze_bn and
# freeze_blocks act on these layers only.
BACKBONE_PREFIXES = ("stem_", "block")


class LayerFactory:
    """Creates named layers, applying width overrides, BatchNorm freezing and synchronisation."""

    def __init__(self, widths: Mapping[str, int] | None = None, freeze_bn: bool = False,
                 sync_bn: bool = False) -> None:
        self._widths = dict(widths or {})
        self._freeze_bn = freeze_bn
        self._sync_bn = sync_bn
        self._used: set[str] = set()
        self._width_names: set[str] = set()

    def _claim(self, name: str) -> str:
        if name in self._used:
            raise ValueError(f"duplicate layer name {name!r}")
        self._used.add(name)
        return name

    def width(self, name: str, default: int) -> int:
        self._width_names.add(name)
        return int(self._widths.get(name, default))

    @property
    def width_names(self) -> frozenset[str]:
        """Layers whose width is free (set by `widths`); the others follow their neighbours."""
        return frozenset(self._width_names & self._used)

    def unused_widths(self) -> set[str]:
        """Names in the widths mapping that matched no layer (a stale or foreign manifest)."""
        return set(self._widths) - self._used

    def conv(self, name: str, filters: int, kernel_size: int = 1, strides: int = 1,
             use_bias: bool = False, bias_initializer: str | keras.initializers.Initializer = "zeros",
             fixed_width: bool = False) -> layers.Conv2D:
        """`fixed_width` for convs whose width is dictated by their consumer, not by `widths`."""
        width = filters if fixed_width else self.width(name, filters)
        return layers.Conv2D(width, kernel_size, strides=strides,
                             padding="same", use_bias=use_bias, kernel_initializer=_CONV_INIT,
                             bias_initializer=bias_initializer, name=self._claim(name))

    def depthwise(self, name: str, kernel_size: int, strides: int = 1) -> layers.DepthwiseConv2D:
        return layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False,
                                      depthwise_initializer=_CONV_INIT, name=self._claim(name))

    def separable(self, name: str, filters: int, fixed_width: bool = False,
                  bias_initializer: str | keras.initializers.Initializer = "zeros",
                  ) -> layers.SeparableConv2D:
        """3x3 depthwise + 1x1 pointwise with bias; `fixed_width` for prediction layers."""
        width = filters if fixed_width else self.width(name, filters)
        return layers.SeparableConv2D(width, 3, padding="same", depth_multiplier=1, use_bias=True,
                                      depthwise_initializer="variance_scaling",
                                      pointwise_initializer="variance_scaling",
                                      bias_initializer=bias_initializer, name=self._claim(name))

    def bn(self, name: str) -> layers.BatchNormalization:
        if self._freeze_bn and name.startswith(BACKBONE_PREFIXES):
            kind = MovingStatsBatchNormalization
        else:
            kind = SyncBatchNormalization if self._sync_bn else layers.BatchNormalization
        return kind(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=self._claim(name))

    def swish(self, name: str) -> layers.Activation:
        return layers.Activation("swish", name=self._claim(name))

    def named(self, name: str) -> str:
        """Claim a name for a parameter-free layer built by the caller."""
        return self._claim(name)


@keras.saving.register_keras_serializable(package="effdet")
class MovingStatsBatchNormalization(layers.BatchNormalization):
    """TAO's freeze_bn: the backbone calls BatchNormalization with training=False
    (core/templates/utils_tf.py block(), efficientnet_tf.py stem/top), so it normalises with
    the moving statistics and never updates them, while gamma and beta keep training."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


@keras.saving.register_keras_serializable(package="effdet")
class SyncBatchNormalization(layers.BatchNormalization):
    """BatchNormalization with the statistics of the global batch (every replica's images),
    as automl trains (its TpuBatchNormalization / SyncBatchNormalization); the same
    variables as the plain layer, so weights move freely between the two.

    Keras's own `synchronized=True` sends three all-reduces per layer (sum, sum of squares,
    count) and three more for their gradients, each a separate collective under
    MultiWorkerMirroredStrategy (the tiny test network's train step traced 544 collectives
    that way, 192 this way; on a busy CPU each costs time). Here the sums travel in one
    all-reduce and the count is the local one times the replicas (every replica has the same batch size). The variance is
    E[x^2] - E[x]^2, as Keras's and automl's, also with one replica, so that one process
    computes what N replicas do.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**{**kwargs, "synchronized": True})

    def _moments(self, inputs, mask):
        context = tf.distribute.get_replica_context()
        if mask is not None or context is None:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        sums = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat(
            [tf.reduce_sum(inputs, axes), tf.reduce_sum(tf.square(inputs), axes)], 0))
        count = tf.reduce_prod(tf.gather(tf.shape(inputs), axes)) * context.num_replicas_in_sync
        mean, mean_square = tf.split(sums / tf.cast(count, sums.dtype), 2)
        return mean, tf.maximum(mean_square - tf.square(mean), 0.0)


@keras.saving.register_keras_serializable(package="effdet")
class FastNormalizedFusion(layers.Layer):
    """BiFPN fast normalised fusion: sum_i relu(w_i) * x_i / (eps + sum_j relu(w_j))."""

    def __init__(self, epsilon: float = FUSION_EPSILON, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape: Sequence[tuple]) -> None:
        self.fusion_weights = self.add_weight(name="fusion_weights", shape=(len(input_shape),),
                                              initializer="ones", trainable=True)

    def call(self, inputs: Sequence) -> keras.KerasTensor:
        weights = ops.relu(ops.cast(self.fusion_weights, inputs[0].dtype))
        weights = weights / (ops.sum(weights) + ops.cast(self.epsilon, weights.dtype))
        fused = inputs[0] * weights[0]
        for i in range(1, len(inputs)):
            fused = fused + inputs[i] * weights[i]
        return fused

    def compute_output_shape(self, input_shape: Sequence[tuple]) -> tuple:
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="effdet")
class NearestResize(layers.Layer):
    """Nearest-neighbour resize to a fixed size: the BiFPN's up-sampling.

    automl and TAO use `tf.compat.v1.image.resize_nearest_neighbor` (source pixel
    floor(dst * in / out), no half-pixel centres); keras' resize centres pixels and would pick
    other rows at sizes that are not multiples of 128, so converted weights would not give
    automl's outputs there.

    Training at exact integer multiples repeats rows and columns instead, the same pixels:
    the resize's gradient (ResizeNearestNeighborGrad) does not compile under XLA. Inference
    keeps the resize, which exports as one ONNX Resize that ONNX Runtime runs in its blocked
    layout (tf.repeat becomes Tile and Reshape chains in NHWC).
    """

    def __init__(self, height: int, width: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.height = height
        self.width = width

    def call(self, inputs, training=None) -> keras.KerasTensor:
        rows, columns = inputs.shape[1], inputs.shape[2]
        if training and self.height % rows == 0 and self.width % columns == 0:
            repeated = ops.repeat(inputs, self.height // rows, axis=1)
            return ops.repeat(repeated, self.width // columns, axis=2)
        resized = tf.compat.v1.image.resize_nearest_neighbor(
            tf.cast(inputs, tf.float32), (self.height, self.width), align_corners=False,
            half_pixel_centers=False)
        return tf.cast(resized, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "height": self.height, "width": self.width}
