"""Size and cost of a built network: trainable parameters and convolution multiply-adds."""

from __future__ import annotations

import keras
import numpy as np


def trainable_params(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def conv_macs(model: keras.Model) -> int:
    """Multiply-adds of every conv call at batch 1 (shared head convs count once per level)."""
    total = 0
    for layer in model.layers:
        for node in layer._inbound_nodes:
            if not node.input_tensors or not node.output_tensors:
                continue
            cin = node.input_tensors[0].shape[-1]
            _, h, w, cout = node.output_tensors[0].shape
            if isinstance(layer, keras.layers.SeparableConv2D):
                kh, kw = layer.kernel_size
                total += h * w * (kh * kw * cin + cin * cout)
            elif isinstance(layer, keras.layers.DepthwiseConv2D):
                kh, kw = layer.kernel_size
                total += h * w * kh * kw * cin
            elif isinstance(layer, keras.layers.Conv2D):
                kh, kw = layer.kernel_size
                total += h * w * kh * kw * cin * cout
    return total
