"""`effdet evaluate`: COCO metrics of a model on the validation set, written to metrics.json.

A .tlt runs as a Keras model over the evaluation pipeline; exported models (.onnx, .etlt,
.engine) run through their runtime (`effdet.runtimes`) on the same validation images.

Detection for metrics follows TAO/automl's evaluation rather than eval_config.min_score_thresh
(which is meant for drawing/inference): no score floor (METRIC_MIN_SCORE) and at most
eval_config.max_detections_per_image boxes per image — a score floor would cut the
low-confidence tail of the precision/recall curve and understate AP. NMS is hard NMS at IoU 0.5
for every model type, the NMS that the exported graphs (ONNX NonMaxSuppression, TensorRT's
EfficientNMS) can run: automl's Gaussian soft-NMS scores about a point higher, but that is not
the accuracy a deployed model has, and the .tlt's number must predict the engine's.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from effdet.coco_metrics import coco_metrics, format_metrics, json_ready
from effdet.data.pipeline import data_errors, eval_dataset
from effdet.detector import DetectFunction, make_detector
from effdet.errors import EffdetError
from effdet.formats.atomic import atomic_write_bytes
from effdet.model.saving import Architecture, load_model
from effdet.spec import load_spec
from effdet.spec.config import ExperimentConfig

log = logging.getLogger("effdet")

METRIC_MIN_SCORE = 0.0
METRICS_FILE = "metrics.json"

@dataclass(frozen=True)
class Detections:
    rows: np.ndarray  # [N, 7] float64: image_id, x, y, w, h (original pixels), score, category_id
    image_ids: list[int]  # every image run, including those without detections


def evaluate(experiment_spec: str | Path, model_path: str | Path, key: str | None, *,
             output_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the .tlt at `model_path` (EMA weights) and write `output_dir`/metrics.json.

    output_dir defaults to the model's directory. Returns what metrics.json holds.
    """
    model_path = Path(model_path)
    config = load_spec(experiment_spec)
    if model_path.suffix.lower() == ".tlt":
        loaded = load_model(model_path, key or "")
        metrics = evaluate_model(loaded.model, loaded.architecture, config)
        epoch = loaded.manifest.get("epoch")
    else:
        metrics, epoch = evaluate_deployed(model_path, key, config), None
    report = {**metrics, "model_path": str(model_path), "epoch": epoch}
    target = Path(output_dir if output_dir is not None else model_path.parent) / METRICS_FILE
    atomic_write_bytes(target, (json.dumps(json_ready(report), indent=2) + "\n").encode())
    log.info("wrote %s", target)
    return report


def evaluate_deployed(model_path: Path, key: str | None,
                      config: ExperimentConfig) -> dict[str, Any]:
    """COCO metrics of an exported model through its runtime, on the first eval_samples
    validation images (the exported graph's own NMS and score floor apply)."""
    from effdet.data.records import read_examples
    from effdet.runtimes import open_detector

    detector = open_detector(model_path, key, config, min_score=METRIC_MIN_SCORE)
    evaluation = config.eval_config
    examples = itertools.islice(read_examples(config.dataset_config.validation_file_pattern),
                                evaluation.eval_samples)
    rows, image_ids = [], []
    try:
        for batch in iter(lambda: list(itertools.islice(examples, evaluation.eval_batch_size)),
                          []):
            images = [decode_rgb(example["image"], example["filename"]) for example in batch]
            for example, found in zip(batch, detector.detect(images)):
                image_id = int(example["source_id"])
                image_ids.append(image_id)
                x1, y1, x2, y2 = found.boxes.T.astype(np.float64)
                rows.append(np.stack([np.full(len(found), image_id, np.float64), x1, y1,
                                      x2 - x1, y2 - y1, found.scores, found.classes], axis=1))
    finally:
        detector.close()
    if not image_ids:
        raise EffdetError(f"{config.dataset_config.validation_file_pattern}: no validation "
                          "images to evaluate")
    metrics = coco_metrics(config.dataset_config.validation_json_file,
                           np.concatenate(rows) if rows else np.zeros((0, 7)),
                           image_ids=image_ids)
    metrics["num_images"] = len(image_ids)
    log.info("COCO metrics of %s on %d images:\n%s", model_path, len(image_ids),
             format_metrics(metrics))
    return metrics


def decode_rgb(encoded: bytes, name: str) -> np.ndarray:
    """RGB pixels as the evaluation pipeline decodes them (TensorFlow's decoder): PIL's
    libjpeg build gives other pixels for the same JPEG (by up to 5 levels with Pillow 13),
    and a model and its export must be evaluated on the same images."""
    try:
        return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
    except tf.errors.InvalidArgumentError as exc:
        # TensorFlow wraps the decoder's reason in the op's name and device.
        reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", exc.message).strip() or "not an image"
        raise EffdetError(f"{name}: cannot decode the stored image ({reason})") from None


def evaluation_detector(model: keras.Model, architecture: Architecture,
                        config: ExperimentConfig) -> DetectFunction:
    """The compiled detector `evaluate_model` runs: the spec's max detections, no score floor.

    Build it once to evaluate one model repeatedly, as training does every eval_epoch_cycle:
    each new detector traced the network and NMS again (a sixth of a tiny training run).
    """
    return make_detector(model, architecture,
                         max_detections=config.eval_config.max_detections_per_image,
                         min_score=METRIC_MIN_SCORE)


def evaluate_model(model: keras.Model, architecture: Architecture, config: ExperimentConfig, *,
                   dataset: tf.data.Dataset | None = None,
                   detect: DetectFunction | None = None) -> dict[str, Any]:
    """COCO metrics of an in-memory model (e.g. the EMA model during training), logged as a table.

    `dataset` replaces the validation pipeline: (images, meta) batches as `eval_dataset`
    yields them; `detect`, the model's `evaluation_detector`, saves tracing it again.
    Returns the twelve COCO numbers, "per_class_AP" and "num_images".
    """
    config = _with_model_geometry(config, architecture)
    if dataset is None:
        dataset = eval_dataset(config, batch_size=config.eval_config.eval_batch_size,
                               limit=config.eval_config.eval_samples)
    detections = run_detection(model, architecture, dataset,
                               detect=detect or evaluation_detector(model, architecture, config))
    if not detections.image_ids:
        raise EffdetError(f"{config.dataset_config.validation_file_pattern}: no validation images "
                          "to evaluate")
    metrics = coco_metrics(config.dataset_config.validation_json_file, detections.rows,
                           image_ids=detections.image_ids)
    metrics["num_images"] = len(detections.image_ids)
    log.info("COCO metrics on %d images:\n%s", metrics["num_images"], format_metrics(metrics))
    return metrics


def run_detection(model: keras.Model, architecture: Architecture, dataset: Iterable[Any], *,
                  max_detections: int = 100, min_score: float = METRIC_MIN_SCORE,
                  detect: DetectFunction | None = None) -> Detections:
    """Run the model over (images, meta) batches; detections as COCO rows in original pixels.

    `detect`: the model's compiled detector if one exists (then the limits are its own).
    """
    detect = detect or make_detector(model, architecture, max_detections=max_detections,
                                     min_score=min_score)
    rows, image_ids = [], []
    with data_errors():
        for images, meta in dataset:
            outputs = detect(images, meta["image_scale"], meta["original_size"])
            source_ids = np.asarray(meta["source_id"]).astype(np.int64)
            rows.append(detection_rows(source_ids, {k: v.numpy() for k, v in outputs.items()}))
            image_ids.extend(int(i) for i in source_ids)
    all_rows = np.concatenate(rows) if rows else np.zeros((0, 7))
    return Detections(all_rows, image_ids)


def detection_rows(source_ids: np.ndarray, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """postprocess outputs (boxes already in original pixels) → [N, 7] COCO result rows."""
    rows = []
    for b, image_id in enumerate(source_ids):
        n = int(outputs["num_detections"][b, 0])
        boxes = yxyx_to_xywh(outputs["detection_boxes"][b, :n])
        rows.append(np.column_stack([
            np.full(n, image_id, dtype=np.float64), boxes,
            outputs["detection_scores"][b, :n], outputs["detection_classes"][b, :n]]))
    return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, 7))


def yxyx_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """[..., 4] [ymin, xmin, ymax, xmax] → COCO [x, y, width, height] (no +1: continuous pixels)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    ymin, xmin, ymax, xmax = np.moveaxis(boxes, -1, 0)
    return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)


def _with_model_geometry(config: ExperimentConfig, architecture: Architecture) -> ExperimentConfig:
    """The spec with the model's input size and anchors: the network fixes both."""
    dataset_config = config.dataset_config
    if dataset_config.image_size != architecture.image_size:
        log.warning("spec image_size %s differs from the model's %s; evaluating at the model's",
                    dataset_config.image_size, architecture.image_size)
    if dataset_config.num_classes != architecture.num_classes:
        log.warning("spec num_classes %d differs from the model's %d",
                    dataset_config.num_classes, architecture.num_classes)
    return dataclasses.replace(
        config, model_config=architecture.model_config,
        dataset_config=dataclasses.replace(dataset_config, image_size=architecture.image_size))
