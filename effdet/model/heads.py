"""Class and box prediction heads, shared across pyramid levels with per-level BatchNorm."""

from __future__ import annotations

import math

import keras
from keras import layers

from effdet.model.layers import LayerFactory

# Focal-loss prior: every anchor starts as background with probability 0.99.
CLASS_PRIOR = 0.01


def prediction_head(features: dict[int, keras.KerasTensor], kind: str, outputs_per_anchor: int,
                    num_anchors: int, num_filters: int, repeats: int,
                    f: LayerFactory) -> dict[int, keras.KerasTensor]:
    """`kind` is "class" or "box"; returns float32 logits [B, H, W, num_anchors * outputs]."""
    convs = [f.separable(f"{kind}_net_conv{i}", num_filters) for i in range(repeats)]
    bias = (keras.initializers.Constant(-math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
            if kind == "class" else "zeros")
    predict = f.separable(f"{kind}_net_predict", num_anchors * outputs_per_anchor,
                          fixed_width=True, bias_initializer=bias)
    outputs = {}
    for level, x in features.items():
        for i, conv in enumerate(convs):
            x = conv(x)
            x = f.bn(f"{kind}_net_conv{i}_bn_p{level}")(x)
            x = f.swish(f"{kind}_net_conv{i}_activation_p{level}")(x)
        x = predict(x)
        # A float32 identity names each level's output and keeps it float32 under mixed precision.
        outputs[level] = layers.Activation("linear", dtype="float32",
                                           name=f.named(f"{kind}_p{level}"))(x)
    return outputs
