"""`effdet export`: a .tlt model (EMA weights) -> ONNX, .etlt, TensorRT graph, DeepStream files.

Written next to each other, from the output path's stem:
  * `<stem>.onnx`: the ONNX Runtime graph (`effdet.export.onnx_graph`: input conventions,
    hard NMS, score floor);
  * `<stem>.etlt`: the same ONNX bytes in TAO's .etlt layout, encrypted with the key;
  * `<stem>.trt.onnx`: the TensorRT graph with the EfficientNMS_TRT plugin
    (`effdet.export.trt_graph`), what TensorRT engines and DeepStream are built from;
  * `labels.txt` and `nvinfer_config.txt` for DeepStream (`effdet.export.deepstream`), here
    and beside the engine;
  * with `engine_file`, the engine (`effdet.tasks.engine`): ONNX Runtime's for a `.onnx`
    engine file, built from `<stem>.onnx`; TensorRT's otherwise, from `<stem>.trt.onnx`.
Model files are never overwritten without `force`; the DeepStream files are regenerated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from effdet.anchors import anchors_for
from effdet.errors import EffdetError
from effdet.export import deepstream, onnx_graph, trt_graph
from effdet.formats.atomic import atomic_write_bytes
from effdet.formats.etlt import write_etlt
from effdet.model.saving import load_model
from effdet.postprocess import NMS_IOU_THRESHOLD
from effdet.spec import load_spec
from effdet.tasks.engine import (
    DEFAULT_WORKSPACE_GB,
    ORT_ENGINE_SUFFIX,
    TRT_SUFFIX,
    build_engine,
    write_engine_deepstream_files,
)

log = logging.getLogger("effdet")


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    etlt_path: Path
    trt_onnx_path: Path
    labels_path: Path
    nvinfer_config_path: Path
    engine_path: Path | None = None


def output_paths(output_path: Path) -> tuple[Path, Path, Path]:
    """(.onnx, .etlt, .trt.onnx) sharing `output_path`'s stem (.etlt or .onnx)."""
    if output_path.suffix not in (".etlt", ".onnx"):
        raise EffdetError(f"{output_path}: the output must end in .etlt (or .onnx)")
    stem = output_path.with_suffix("")
    return (stem.with_name(stem.name + ".onnx"), stem.with_name(stem.name + ".etlt"),
            stem.with_name(stem.name + TRT_SUFFIX))


def export(model_path: str | Path, experiment_spec: str | Path, output_path: str | Path | None,
           key: str, *, data_type: str = "fp32", force: bool = False,
           engine_file: str | Path | None = None, cal_image_dir: str | Path | None = None,
           cal_cache_file: str | Path | None = None, batch_size: int = 1, batches: int = 10,
           max_batch_size: int = 1, max_workspace_size: int = DEFAULT_WORKSPACE_GB,
           opset: int = onnx_graph.OPSET) -> ExportResult:
    """Export the .tlt at `model_path`; output_path defaults to it with the .etlt suffix."""
    model_path = Path(model_path)
    onnx_path, etlt_path, trt_path = output_paths(
        Path(output_path) if output_path else model_path.with_suffix(".etlt"))
    engine_path = Path(engine_file) if engine_file else None
    existing = [p for p in (onnx_path, etlt_path, trt_path, engine_path) if p and p.exists()]
    if existing and not force:
        raise EffdetError(f"{existing[0]}: already exists (pass --force to overwrite)")

    config = load_spec(experiment_spec)
    loaded = load_model(model_path, key)
    architecture = loaded.architecture
    if config.dataset_config.image_size != architecture.image_size:
        log.warning("spec image_size %s differs from the model's %s; exporting the model's",
                    config.dataset_config.image_size, architecture.image_size)
    eval_config = config.eval_config
    labels = deepstream.class_names(architecture.num_classes,
                                    config.dataset_config.validation_json_file)
    metadata = {onnx_graph.LABELS_KEY: json.dumps(labels),
                onnx_graph.MIN_SCORE_KEY: repr(eval_config.min_score_thresh)}

    max_detections = eval_config.max_detections_per_image
    detection = onnx_graph.to_onnx(
        onnx_graph.detection_function(loaded.model, architecture, max_detections=max_detections),
        onnx_graph.OUTPUT_NAMES, opset, onnx_runtime=True)
    head = onnx_graph.to_onnx(onnx_graph.head_function(loaded.model, architecture),
                              (onnx_graph.BOX_CODES, onnx_graph.CLASS_LOGITS), opset)
    trt = trt_graph.add_efficient_nms(
        head, anchors_for(architecture.model_config, architecture.image_size),
        max_detections=max_detections, score_threshold=onnx_graph.EXPORT_MIN_SCORE,
        iou_threshold=NMS_IOU_THRESHOLD)
    for model in (detection, trt):
        onnx_graph.set_metadata(model, metadata)

    onnx_bytes = detection.SerializeToString()
    trt_bytes = trt.SerializeToString()
    atomic_write_bytes(onnx_path, onnx_bytes)
    write_etlt(etlt_path, onnx_bytes, key)
    atomic_write_bytes(trt_path, trt_bytes)
    log.info("wrote %s, %s and %s", onnx_path, etlt_path, trt_path)

    cache = Path(cal_cache_file) if cal_cache_file else None
    on_ort = engine_path is not None and engine_path.suffix == ORT_ENGINE_SUFFIX
    if engine_path is not None:
        build_engine(onnx_bytes if on_ort else trt_bytes, engine_path, data_type=data_type,
                     cal_image_dir=Path(cal_image_dir) if cal_image_dir else None,
                     cal_cache_file=cache, batch_size=batch_size, batches=batches,
                     max_batch_size=max_batch_size, max_workspace_size=max_workspace_size)
    labels_path, config_path = deepstream.write_deepstream_files(
        etlt_path.parent, labels, onnx_file=trt_path,
        engine_file=engine_path if engine_path and not on_ort else None,
        image_size=architecture.image_size, data_type=data_type, batch_size=max_batch_size,
        score_threshold=eval_config.min_score_thresh, cal_cache_file=None if on_ort else cache)
    if engine_path is not None:  # beside the engine too, as gen_trt_engine writes them
        write_engine_deepstream_files(trt_bytes, engine_path, data_type=data_type,
                                      batch_size=max_batch_size, cal_cache_file=cache,
                                      onnx_file=trt_path)
    return ExportResult(onnx_path, etlt_path, trt_path, labels_path, config_path, engine_path)
