"""DeepStream `nvinfer` config and labels.txt for an exported model (TAO's DeepStream layout).

The config follows deepstream_tao_apps' EfficientDet config
(configs/nvinfer/efficientdet_tao/pgie_d0_512_tao_config.txt): the graph normalises inside, so
net-scale-factor 1 and zero offsets; RGB, NHWC input; the four TAO outputs parsed by
NvDsInferParseCustomEfficientDetTAO from deepstream_tao_apps' libnvds_infercustomparser_tao;
cluster-mode 4 (no clustering: EfficientNMS_TRT already suppressed).
It points at the TensorRT-flavoured ONNX (`onnx-file`): DeepStream cannot decrypt effdet's
.etlt (its cipher is not TAO's). nvinfer pads maintain-aspect-ratio frames with black where
training padded with the mean colour; the difference is confined to the padding.

labels.txt: line i names class channel i. The parser takes EfficientNMS_TRT's
detection_classes as the class id, and those are 0-based logit channels (no background), so
line 0 is category id 1, as in that repository's efficientdet_d0_512_labels.txt
("person" first for COCO), and num-detected-classes is the channel count.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from effdet.export.onnx_graph import OUTPUT_NAMES
from effdet.formats.atomic import atomic_write_bytes

log = logging.getLogger("effdet")

LABELS_FILE = "labels.txt"
CONFIG_FILE = "nvinfer_config.txt"
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
PARSER_FUNCTION = "NvDsInferParseCustomEfficientDetTAO"
PARSER_LIBRARY = "libnvds_infercustomparser_tao.so"


def class_names(num_classes: int, annotations_file: str | Path | None) -> list[str]:
    """Names for category ids 0..num_classes-1 from a COCO json's categories when readable."""
    names = {0: "background"}
    if annotations_file:
        try:
            categories = json.loads(Path(annotations_file).read_text())["categories"]
            names.update({int(c["id"]): str(c["name"]) for c in categories})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: no class names for labels.txt (%s); using class_<id>",
                        annotations_file, exc)
    return [names.get(i, f"class_{i}") for i in range(num_classes)]


def write_labels(directory: Path, channel_names: Sequence[str]) -> Path:
    path = directory / LABELS_FILE
    atomic_write_bytes(path, "".join(f"{name}\n" for name in channel_names).encode())
    return path


def write_nvinfer_config(directory: Path, *, onnx_file: Path | None, image_size: tuple[int, int],
                         num_classes: int, data_type: str, batch_size: int,
                         score_threshold: float, engine_file: Path | None = None,
                         cal_cache_file: Path | None = None) -> Path:
    """Write `directory`/nvinfer_config.txt; files are referenced relative to `directory`,
    where DeepStream resolves them: the config stays valid wherever the results are moved or
    checked out."""
    def relative(path: Path) -> str:
        try:
            return os.path.relpath(path.resolve(), directory.resolve())
        except ValueError:  # another drive
            return str(path.resolve())

    lines = [
        "[property]",
        "gpu-id=0",
        "net-scale-factor=1.0",
        "offsets=0;0;0",
        "model-color-format=0",
        *([f"onnx-file={relative(onnx_file)}"] if onnx_file else []),
        *([f"model-engine-file={relative(engine_file)}"] if engine_file else []),
        *([f"int8-calib-file={relative(cal_cache_file)}"]
          if data_type == "int8" and cal_cache_file else []),
        f"labelfile-path={LABELS_FILE}",
        f"infer-dims=3;{image_size[0]};{image_size[1]}",
        "network-input-order=1",
        "maintain-aspect-ratio=1",
        "symmetric-padding=0",
        f"batch-size={batch_size}",
        f"network-mode={NETWORK_MODES[data_type]}",
        f"num-detected-classes={num_classes}",
        "interval=0",
        "gie-unique-id=1",
        "network-type=0",
        "cluster-mode=4",
        f"output-blob-names={';'.join(OUTPUT_NAMES)}",
        f"parse-bbox-func-name={PARSER_FUNCTION}",
        f"custom-lib-path={PARSER_LIBRARY}",
        "",
        "[class-attrs-all]",
        f"pre-cluster-threshold={score_threshold}",
        "",
    ]
    path = directory / CONFIG_FILE
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def write_deepstream_files(directory: Path, labels: Sequence[str], **config: object
                           ) -> tuple[Path, Path]:
    """labels.txt and nvinfer_config.txt in `directory`; `labels` as `class_names` (index =
    category id, 0 = background), `config` as `write_nvinfer_config`."""
    channels = list(labels[1:])
    return (write_labels(directory, channels),
            write_nvinfer_config(directory, num_classes=len(channels), **config))
