"""Exponential moving average of the model's weights (what evaluation and export use)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf


class WeightAverage:
    """Shadow copies of `variables`, updated after every step.

    The effective decay is min(decay, (1 + step) / (10 + step)), as in the reference
    implementation, so early averages are not dominated by the random initialisation.
    """

    def __init__(self, variables: Sequence[keras.Variable], decay: float):
        self.variables = list(variables)
        self.decay = float(decay)
        self.shadows = [
            tf.Variable(np.asarray(v.numpy()), trainable=False, name=f"ema_{i}")
            for i, v in enumerate(self.variables)
        ]

    def update(self, step: tf.Tensor) -> None:
        step = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        for shadow, variable in zip(self.shadows, self.variables):
            value = tf.cast(variable.value, shadow.dtype)
            shadow.assign(decay * shadow + (1.0 - decay) * value)

    def arrays(self) -> dict[str, np.ndarray]:
        """Averages keyed by the model variable's path (the .tlt member names)."""
        return {v.path: s.numpy() for v, s in zip(self.variables, self.shadows)}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for variable, shadow in zip(self.variables, self.shadows):
            shadow.assign(arrays[variable.path])
