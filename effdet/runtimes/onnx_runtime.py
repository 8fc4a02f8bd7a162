"""`.onnx` and `.etlt` models run by ONNX Runtime on the CPU.

The exported graph takes 0..255 RGB pixels [B, H, W, 3] named `input` and normalises inside,
so the batch is padded with the mean colour: the in-graph normalisation turns it into exactly
the 0 padding the network was trained with. Class names come from the model's metadata
(`effdet.labels`, the exporter's JSON list indexed by category id) when present.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from effdet.data.preprocess import MEAN_RGB
from effdet.errors import EffdetError
from effdet.export.onnx_graph import INPUT_NAME as INPUT
from effdet.export.onnx_graph import LABELS_KEY
from effdet.export.onnx_graph import OUTPUT_NAMES as OUTPUTS
from effdet.runtimes.base import (
    Detections,
    Detector,
    from_outputs,
    letterbox,
    to_original,
)
from effdet.runtimes.ort_options import session_options


class OnnxDetector(Detector):
    def __init__(self, model: bytes, source: str, *, min_score: float,
                 default_image_size: tuple[int, int]):
        import onnxruntime

        try:
            self._session = onnxruntime.InferenceSession(model, sess_options=session_options(),
                                                         providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 (onnxruntime raises untyped pybind errors)
            raise EffdetError(f"{source}: not a loadable ONNX model ({exc})") from None
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        missing = ([INPUT] if INPUT not in inputs else []) + sorted(set(OUTPUTS) - outputs)
        if missing:
            raise EffdetError(f"{source}: not an effdet export (no {', '.join(missing)})")
        shape = inputs[INPUT].shape  # [B, H, W, 3]; symbolic dims are strings or None
        # A model exported for a fixed batch is fed in chunks of exactly that size.
        self._batch = shape[0] if isinstance(shape[0], int) else None
        image_size = ((shape[1], shape[2]) if all(isinstance(d, int) for d in shape[1:3])
                      else default_image_size)
        metadata = self._session.get_modelmeta().custom_metadata_map
        super().__init__(image_size, min_score, _class_names(metadata.get(LABELS_KEY)))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        step = self._batch or max(len(images), 1)
        results: list[Detections] = []
        for start in range(0, len(images), step):
            results.extend(self._detect_chunk(images[start:start + step], step))
        return results

    def _detect_chunk(self, images: Sequence[np.ndarray], size: int) -> list[Detections]:
        batch = letterbox(images, self.image_size, MEAN_RGB)
        feed = batch.images
        if self._batch is not None and len(images) < size:  # fill a fixed batch; rows ignored
            feed = np.concatenate([feed, np.repeat(feed[-1:], size - len(images), axis=0)])
        values = self._session.run(list(OUTPUTS), {INPUT: feed})
        outputs = dict(zip(OUTPUTS, values))
        return [to_original(from_outputs(outputs, i, self.min_score), batch.scales[i],
                            batch.sizes[i]) for i in range(len(images))]


def _class_names(text: str | None) -> dict[int, str]:
    """The exporter's label list (index = category id, 0 = background) as id → name."""
    if not text:
        return {}
    try:
        labels = json.loads(text)
    except ValueError:  # a malformed optional field costs only the names
        return {}
    if not isinstance(labels, list):
        return {}
    return {i: str(name) for i, name in enumerate(labels) if i > 0}
