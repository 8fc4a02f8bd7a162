"""One detector interface over Keras (.tlt), ONNX Runtime (.onnx, .etlt) and TensorRT (.engine).

Runtimes are imported when chosen: TensorRT exists only on GPU machines, and building the
Keras network is only worth it for a .tlt.
"""

from __future__ import annotations

from pathlib import Path

from effdet.errors import EffdetError
from effdet.runtimes.base import Detections, Detector
from effdet.spec.config import ExperimentConfig

SUFFIXES = (".tlt", ".onnx", ".etlt", ".engine")
KEYLESS_SUFFIXES = (".onnx", ".engine")

__all__ = ["KEYLESS_SUFFIXES", "SUFFIXES", "Detections", "Detector", "open_detector"]


def open_detector(model_path: str | Path, key: str | None, config: ExperimentConfig, *,
                  min_score: float | None = None) -> Detector:
    """Load the model at `model_path` with the runtime its suffix names.

    min_score defaults to eval_config.min_score_thresh; max detections per image come from
    eval_config (Keras; exported models carry their own). `key` is needed for .tlt and .etlt.
    """
    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise EffdetError(f"{path}: unknown model type {suffix or '(no suffix)'!r}; expected "
                          f"one of {', '.join(SUFFIXES)}")
    if suffix not in KEYLESS_SUFFIXES and not key:
        raise EffdetError(f"{path}: a key is needed to decrypt a {suffix} model")
    if not path.is_file():  # before TensorRT's absence: the path is the likelier mistake
        raise EffdetError(f"{path}: file not found")
    score = config.eval_config.min_score_thresh if min_score is None else min_score
    if suffix == ".tlt":
        from effdet.runtimes.keras_runtime import KerasDetector

        return KerasDetector(path, key or "", min_score=score,
                             max_detections=config.eval_config.max_detections_per_image)
    if suffix == ".engine":
        from effdet.runtimes.tensorrt_runtime import TensorRTDetector

        return TensorRTDetector(path, min_score=score)
    from effdet.formats.etlt import read_etlt
    from effdet.runtimes.onnx_runtime import OnnxDetector

    model = read_etlt(path, key or "") if suffix == ".etlt" else path.read_bytes()
    return OnnxDetector(model, str(path), min_score=score,
                        default_image_size=config.dataset_config.image_size)
