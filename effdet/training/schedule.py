"""Learning rate: linear warm-up from `lr_warmup_init`, then cosine decay to 0 at the end."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="effdet")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak: float, warmup_init: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_init = float(warmup_init)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(self.warmup_steps, tf.float32)
        progress = step / tf.maximum(warmup, 1.0)
        warm = self.warmup_init + (self.peak - self.warmup_init) * progress
        decay_steps = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        fraction = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(math.pi * fraction))
        return tf.where(step < warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_init": self.warmup_init,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}
