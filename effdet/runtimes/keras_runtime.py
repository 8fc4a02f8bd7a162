"""`.tlt` models run by Keras, through the same compiled detector as `effdet evaluate`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from effdet.detector import make_detector
from effdet.model.saving import load_model
from effdet.runtimes.base import Detections, Detector, from_outputs, letterbox


class KerasDetector(Detector):
    def __init__(self, model_path: Path, key: str, *, min_score: float, max_detections: int):
        loaded = load_model(model_path, key)
        names = loaded.manifest.get("classes") or {}
        super().__init__(loaded.architecture.image_size, min_score,
                         {int(k): str(v) for k, v in names.items()})
        self._detect = make_detector(loaded.model, loaded.architecture,
                                     max_detections=max_detections, min_score=min_score)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        # Normalise before padding, as in training, so the padding is exactly 0.
        batch = letterbox(images, self.image_size, (0.0, 0.0, 0.0), normalize=True)
        outputs = self._detect(tf.constant(batch.images), tf.constant(batch.scales),
                               tf.constant(batch.sizes))
        outputs = {name: value.numpy() for name, value in outputs.items()}
        # make_detector already maps the boxes to original pixels and clips them.
        return [from_outputs(outputs, i, self.min_score) for i in range(len(images))]
