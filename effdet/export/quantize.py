"""int8 ONNX Runtime models: static QDQ quantisation of the network part of an exported graph.

The CPU counterpart of TensorRT's int8 build: activation ranges (min/max) come from
calibration batches prepared as the graph expects, or from a calibration cache (ONNX Runtime's
JSON tensor ranges, written on the first build and read instead of the images on later ones).
Only the network is quantised: the input's normalisation before it and what consumes the
prediction convolutions' outputs (flattening, candidate top-k, box decoding against the anchors,
clipping, NMS) stay float, so the boxes are exactly the decoding of the int8 network's outputs.

Types, measured on this kind of CPU (x86, AVX2/AVX-512): unsigned activations with signed
weights run on ONNX Runtime's fused QLinear kernels; signed activations leave most convolutions
as float Dequantize/Conv/Quantize and ran ~2x slower than fp32. Weights are per channel
(EfficientNet's batch-norm-folded depthwise filters differ by orders of magnitude between
channels) and 7-bit (reduce_range): without VNNI the U8S8 kernels' 16-bit intermediate sums
can saturate with full 8-bit weights.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx

from effdet.errors import EffdetError
from effdet.export.onnx_graph import INPUT_NAME
from effdet.runtimes.ort_options import quiet_onnxruntime

NETWORK_OPS = ("Conv",)
REDUCE_RANGE = True


def postprocess_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes after the network: those from which no convolution is reachable.

    The network ends with the class and box prediction convolutions; what follows must stay
    float, or the quantiser would also requantise the top-k and gather inputs and the boxes.
    """
    producer = {output: node for node in model.graph.node for output in node.output}
    network: set[str] = set()
    frontier = [node for node in model.graph.node if node.op_type in NETWORK_OPS]
    while frontier:
        node = frontier.pop()
        if node.name in network:
            continue
        network.add(node.name)
        frontier.extend(producer[name] for name in node.input if name in producer)
    if not network:
        raise EffdetError("the model has no convolutions to quantise")
    return {node.name for node in model.graph.node} - network


def preprocess_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes before the network: those the graph input reaches without passing a
    convolution (its transpose and normalisation).

    Quantised, the normalisation's per-channel Mul became a broadcasting QLinearMul, D0's
    slowest int8 kernel at batch 1 (6 of 53 ms), and the input was quantised twice before the
    first convolution; in float the first convolution's input is quantised once.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    before: set[str] = set()
    frontier = [value.name for value in model.graph.input]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.op_type not in NETWORK_OPS and node.name not in before:
                before.add(node.name)
                frontier.extend(node.output)
    return before


def quantize_int8(onnx_bytes: bytes, output: Path, *,
                  batches: Callable[[], Iterator[np.ndarray]] | None, cache_file: Path) -> None:
    """Write the QDQ int8 model of `onnx_bytes` to `output`.

    Ranges are read from `cache_file` when it exists, otherwise measured on `batches()` and
    written to it (atomically, by ONNX Runtime).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, source: Iterator[np.ndarray]) -> None:
            self._batches = source

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    quiet_onnxruntime()  # the quantiser opens its own calibration sessions
    cached = cache_file.exists()
    if cached:
        check_cache(cache_file)
    original = onnx.load_from_string(onnx_bytes)
    with tempfile.TemporaryDirectory(prefix="effdet-int8-") as folder:
        exported, prepared = Path(folder) / "exported.onnx", Path(folder) / "prepared.onnx"
        exported.write_bytes(onnx_bytes)
        # ONNX shape inference and ONNX Runtime's basic optimisations (batch norm folded into
        # the convolutions), the input the quantiser expects; symbolic inference needs sympy
        # and adds nothing here (only the batch axis is dynamic).
        quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
        prepared_model = onnx.load(prepared)
        excluded = postprocess_nodes(prepared_model) | preprocess_nodes(prepared_model)
        quantize_static(
            str(prepared), str(output),
            None if cached or batches is None else Reader(batches()),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=REDUCE_RANGE,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(excluded), calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache_file))
    quantized = onnx.load(output)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(original.metadata_props)
    onnx.save(quantized, output)


def check_cache(cache_file: Path) -> None:
    try:
        ranges = json.loads(cache_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        ranges = None
    if not isinstance(ranges, dict) or not isinstance(ranges.get("data"), dict):
        raise EffdetError(f"{cache_file}: not an ONNX Runtime calibration cache (JSON tensor "
                          "ranges); a TensorRT cache serves TensorRT engines only")
