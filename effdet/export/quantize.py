"""int8 ONNX Runtime models: static QDQ quantisation of the network part of an exported graph.

The CPU counterpart of TensorRT's int8 build: activation ranges come from TensorRT's entropy
calibration (`entropy_calibration`) on batches prepared as the graph expects, or from a
calibration cache (ONNX Runtime's JSON tensor ranges, written on the first build and read
instead of the images on later ones; caches of ONNX Runtime's own min/max calibration still load).
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
from typing import Any

import numpy as np
import onnx

from effdet.errors import EffdetError
from effdet.export.entropy_calibration import entropy_ranges
from effdet.export.onnx_graph import INPUT_NAME
from effdet.runtimes.ort_options import quiet_onnxruntime, session_options

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


def calibrated_tensors(model: onnx.ModelProto, excluded: set[str]) -> list[str]:
    """The float activations the quantiser may ask a range for: every non-constant float input
    and output of the nodes it quantises (those not `excluded`)."""
    floats = {value.name for value in [*model.graph.value_info, *model.graph.input,
                                       *model.graph.output]
              if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    constants = {tensor.name for tensor in model.graph.initializer}
    names = {name for node in model.graph.node if node.name not in excluded
             for name in [*node.input, *node.output]}
    return sorted((names & floats) - constants)


def tensor_runner(model: onnx.ModelProto,
                  names: list[str]) -> Callable[[np.ndarray], list[np.ndarray]]:
    """`run(batch)`: the float model's `names` tensors on `batch`."""
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {value.name for value in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name)
                              for name in names if name not in outputs)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), session_options(),
                                           providers=["CPUExecutionProvider"])
    return lambda batch: session.run(names, {INPUT_NAME: batch})


def write_cache(ranges: dict[str, tuple[float, float]], cache_file: Path) -> None:
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    save_tensors_data(TensorsData(CalibrationMethod.Entropy, {
        name: TensorData(lowest=np.float32(low), highest=np.float32(high))
        for name, (low, high) in ranges.items()}), cache_file)


def quantize_int8(onnx_bytes: bytes, output: Path, *,
                  batches: Callable[[], Iterator[np.ndarray]] | None, cache_file: Path) -> None:
    """Write the QDQ int8 model of `onnx_bytes` to `output`.

    Ranges are read from `cache_file` when it exists, otherwise calibrated on `batches()` and
    written to it (atomically, by ONNX Runtime's cache writer).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    quiet_onnxruntime()  # the quantiser opens its own sessions
    if cache_file.exists():
        method = check_cache(cache_file)
    elif batches is None:
        raise EffdetError(f"{cache_file}: no calibration cache yet, and no images to make it")
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
        if not cache_file.exists():
            names = calibrated_tensors(prepared_model, excluded)
            write_cache(entropy_ranges(tensor_runner(prepared_model, names), names, batches),
                        cache_file)
            method = check_cache(cache_file)
        quantize_static(
            str(prepared), str(output), None,
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=REDUCE_RANGE,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(excluded), calibrate_method=method,
            calibration_cache_path=str(cache_file))
    quantized = onnx.load(output)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(original.metadata_props)
    onnx.save(quantized, output)


def check_cache(cache_file: Path) -> Any:
    """The calibration method `cache_file` was made with (the quantiser insists on it)."""
    from onnxruntime.quantization import CalibrationMethod

    try:
        ranges = json.loads(cache_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        ranges = None
    if isinstance(ranges, dict) and isinstance(ranges.get("data"), dict) \
            and isinstance(ranges.get("calibration_method"), dict):
        name = str(ranges["calibration_method"].get("value", "")).rpartition(".")[2]
    else:
        name = None
    if name not in CalibrationMethod.__members__:
        raise EffdetError(f"{cache_file}: not an ONNX Runtime calibration cache (JSON tensor "
                          "ranges); a TensorRT cache serves TensorRT engines only")
    return CalibrationMethod[name]
