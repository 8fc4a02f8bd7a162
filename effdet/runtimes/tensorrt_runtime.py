"""TensorRT `.engine` files (TensorRT >= 10 Python API), with CUDA memory from cuda-python.

Both `tensorrt` and `cuda.bindings.runtime` (the `cuda-python` package) are imported only
when an engine is opened: neither exists on CPU-only machines, where opening an engine is a
clear error (exit code 2) instead of an import failure. Engines are those `gen_trt_engine`
builds from the export: input `input` float32 [B, H, W, 3] 0..255 (normalised in the graph,
so the batch is mean-padded as for ONNX) and the four detection outputs. Their
EfficientNMS_TRT node reports classes as logit channels (0-based, no background), where the
ONNX Runtime graph reports category ids (channel + 1): the runtime adds the 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effdet.data.preprocess import MEAN_RGB
from effdet.errors import EffdetError
from effdet.export.onnx_graph import INPUT_NAME as INPUT
from effdet.export.onnx_graph import OUTPUT_NAMES as OUTPUTS
from effdet.runtimes.base import (
    Detections,
    Detector,
    from_outputs,
    letterbox,
    to_original,
)

MISSING_EXIT = 2
CLASS_OFFSET = 1  # EfficientNMS_TRT channel → category id


class TensorRTUnavailable(EffdetError):
    exit_code = MISSING_EXIT


def _import_tensorrt() -> tuple[Any, Any]:
    try:
        import tensorrt
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"running a .engine needs TensorRT (the tensorrt and cuda-python packages) and an "
            f"NVIDIA GPU; {exc.name or 'tensorrt'} is not installed — use the .onnx or .etlt "
            f"model instead") from None
    return tensorrt, cudart


class TensorRTDetector(Detector):
    def __init__(self, engine_path: Path, *, min_score: float):
        trt, self._cudart = _import_tensorrt()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise EffdetError(f"{engine_path}: not a TensorRT engine this TensorRT can load "
                              "(engines are tied to the TensorRT version and GPU that built them)")
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        missing = sorted(({INPUT, *OUTPUTS}) - names)
        if missing:
            raise EffdetError(f"{engine_path}: not an effdet engine (no {', '.join(missing)})")
        self._context = self._engine.create_execution_context()
        self._dtypes = {name: np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                        for name in (INPUT, *OUTPUTS)}
        shape = tuple(self._engine.get_tensor_shape(INPUT))
        # A dynamic batch (-1) is bounded by the optimisation profile the engine was built with.
        self._max_batch = (shape[0] if shape[0] > 0
                           else int(self._engine.get_tensor_profile_shape(INPUT, 0)[2][0]))
        self._stream = self._check(self._cudart.cudaStreamCreate())
        super().__init__((int(shape[1]), int(shape[2])), min_score)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        results: list[Detections] = []
        for start in range(0, len(images), self._max_batch):
            results.extend(self._detect_chunk(images[start:start + self._max_batch]))
        return results

    def _detect_chunk(self, images: Sequence[np.ndarray]) -> list[Detections]:
        batch = letterbox(images, self.image_size, MEAN_RGB)
        feed = np.ascontiguousarray(batch.images, dtype=self._dtypes[INPUT])
        static_batch = self._engine.get_tensor_shape(INPUT)[0]
        if static_batch > 0 and len(images) < static_batch:  # fill a fixed batch; rows ignored
            feed = np.concatenate([feed, np.repeat(feed[-1:], static_batch - len(images), 0)])
        self._context.set_input_shape(INPUT, feed.shape)
        hosts = {name: np.empty(tuple(self._context.get_tensor_shape(name)), self._dtypes[name])
                 for name in OUTPUTS}
        hosts[INPUT] = feed
        devices: dict[str, int] = {}
        try:
            for name, host in hosts.items():
                devices[name] = self._check(self._cudart.cudaMalloc(max(host.nbytes, 1)))
                self._context.set_tensor_address(name, devices[name])
            self._copy(devices[INPUT], feed.ctypes.data, feed.nbytes, to_device=True)
            if not self._context.execute_async_v3(int(self._stream)):
                raise EffdetError("TensorRT failed to run the engine")
            for name in OUTPUTS:
                self._copy(hosts[name].ctypes.data, devices[name], hosts[name].nbytes,
                           to_device=False)
            self._check(self._cudart.cudaStreamSynchronize(self._stream))
        finally:
            for pointer in devices.values():
                self._cudart.cudaFree(pointer)
        hosts["detection_classes"] = hosts["detection_classes"] + CLASS_OFFSET
        return [to_original(from_outputs(hosts, i, self.min_score), batch.scales[i],
                            batch.sizes[i]) for i in range(len(images))]

    def _copy(self, destination: int, source: int, nbytes: int, *, to_device: bool) -> None:
        kinds = self._cudart.cudaMemcpyKind
        kind = kinds.cudaMemcpyHostToDevice if to_device else kinds.cudaMemcpyDeviceToHost
        self._check(self._cudart.cudaMemcpyAsync(destination, source, nbytes, kind,
                                                 self._stream))

    def _check(self, result: Any) -> Any:
        """cuda-python returns (error, *values); raise on an error, else the value if any."""
        error, *values = result if isinstance(result, tuple) else (result,)
        if error != self._cudart.cudaError_t.cudaSuccess:
            raise EffdetError(f"CUDA error: {self._cudart.cudaGetErrorString(error)[1]!r}")
        return values[0] if values else None

    def close(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
