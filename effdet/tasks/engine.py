"""`effdet gen_trt_engine`: an inference engine from an exported .onnx or .etlt.

Two kinds of engine, chosen by the engine file's suffix:
  * `.onnx`: ONNX Runtime's optimised model for this machine (all graph optimisations, one
    intra-op thread per core), the CPU pipeline's "engine"; with int8, the network is first
    quantised (effdet.export.quantize) with ranges calibrated on the same `calibration_batches`
    and cached in the calibration cache, as for TensorRT;
  * anything else (`.engine`, `.plan`, …): a serialized TensorRT (>= 10) engine, built with the
    ONNX parser, one optimisation profile over batch min..opt..max (TAO's --min/opt/
    max_batch_size), a workspace limit in GB (TAO's --max_workspace_size), fp16/int8 flags and
    an IInt8EntropyCalibrator2 fed by `calibration_batches` (the exported graph's own input
    preparation) that writes and reuses the calibration cache.
Beside either go DeepStream's labels.txt and nvinfer_config.txt (`effdet.export.deepstream`).
TensorRT and the CUDA bindings are imported only here, so the rest of effdet runs without them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from effdet.errors import EffdetError
from effdet.formats.atomic import atomic_path, atomic_write_bytes
from effdet.formats.etlt import read_etlt
from effdet.runtimes.ort_options import session_options

log = logging.getLogger("effdet")

DATA_TYPES = ("fp32", "fp16", "int8")
ORT_ENGINE_SUFFIX = ".onnx"
TRT_SUFFIX = ".trt.onnx"  # export's TensorRT graph, what TensorRT and DeepStream build from
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_WORKSPACE_GB = 2  # TAO's and tao_deploy's --max_workspace_size default


class EngineUnavailable(EffdetError):
    """TensorRT or a GPU is missing: the machine, not the input, is the problem."""

    exit_code = 2


def read_model(model_path: Path, key: str | None) -> bytes:
    """ONNX bytes of an exported .onnx, or of an .etlt decrypted with `key`."""
    if model_path.suffix == ".etlt":
        if not key:
            raise EffdetError(f"{model_path}: an .etlt needs its key (-k)")
        return read_etlt(model_path, key)
    if model_path.suffix == ".onnx":
        try:
            return model_path.read_bytes()
        except FileNotFoundError:
            raise EffdetError(f"{model_path}: file not found") from None
    raise EffdetError(f"{model_path}: expected an .onnx or .etlt model")


def gen_trt_engine(model_path: str | Path, key: str | None, engine_file: str | Path, *,
                   data_type: str = "fp32", cal_image_dir: str | Path | None = None,
                   cal_cache_file: str | Path | None = None, batch_size: int = 1,
                   batches: int = 10, max_batch_size: int = 1,
                   max_workspace_size: int = DEFAULT_WORKSPACE_GB, min_batch_size: int = 1,
                   opt_batch_size: int | None = None,
                   strict_type_constraints: bool = False) -> Path:
    """Build the engine for `model_path` into `engine_file`; returns `engine_file`.

    Next to every engine go DeepStream's labels.txt and nvinfer_config.txt, from the labels
    and threshold export stored in the model's metadata.
    """
    model_path, engine_file = Path(model_path), Path(engine_file)
    if engine_file.resolve() == model_path.resolve():
        raise EffdetError(f"{engine_file}: the engine file would overwrite the model")
    cache = Path(cal_cache_file) if cal_cache_file else None
    onnx_bytes = read_model(model_path, key)
    build_engine(onnx_bytes, engine_file, data_type=data_type,
                 cal_image_dir=Path(cal_image_dir) if cal_image_dir else None,
                 cal_cache_file=cache, batch_size=batch_size, batches=batches,
                 max_batch_size=max_batch_size, max_workspace_size=max_workspace_size,
                 min_batch_size=min_batch_size, opt_batch_size=opt_batch_size,
                 strict_type_constraints=strict_type_constraints)
    write_engine_deepstream_files(onnx_bytes, engine_file, data_type=data_type,
                                  batch_size=max_batch_size, cal_cache_file=cache,
                                  onnx_file=deepstream_onnx(model_path))
    return engine_file


def deepstream_onnx(model_path: Path) -> Path | None:
    """The ONNX DeepStream builds its engine from: the TensorRT graph export wrote beside the
    model (`<stem>.trt.onnx`), else the model itself when it is an ONNX file."""
    if model_path.name.endswith(TRT_SUFFIX):
        return model_path
    trt_graph = model_path.with_name(model_path.name.removesuffix(model_path.suffix)
                                     + TRT_SUFFIX)
    if trt_graph.is_file():
        return trt_graph
    return model_path if model_path.suffix == ".onnx" else None


def write_engine_deepstream_files(onnx_bytes: bytes, engine_file: Path, *, data_type: str,
                                  batch_size: int, cal_cache_file: Path | None,
                                  onnx_file: Path | None) -> tuple[Path, Path] | None:
    """labels.txt and nvinfer_config.txt beside `engine_file`. DeepStream runs TensorRT
    engines only: beside ONNX Runtime's model the config names just the ONNX to build one
    from, in fp32 for int8 (ONNX Runtime's calibration cache is no TensorRT table)."""
    from effdet.export import deepstream
    from effdet.export.onnx_graph import LABELS_KEY, MIN_SCORE_KEY, read_metadata

    model = onnx.load_from_string(onnx_bytes)
    metadata = read_metadata(model)
    if LABELS_KEY not in metadata:
        log.warning("the model carries no effdet labels (not exported by effdet); "
                    "no DeepStream files written")
        return None
    dims = model.graph.input[0].type.tensor_type.shape.dim
    tensorrt = engine_file.suffix != ORT_ENGINE_SUFFIX
    return deepstream.write_deepstream_files(
        engine_file.parent, json.loads(metadata[LABELS_KEY]), onnx_file=onnx_file,
        engine_file=engine_file if tensorrt else None,
        image_size=(dims[1].dim_value, dims[2].dim_value),
        data_type=data_type if tensorrt or data_type != "int8" else "fp32",
        batch_size=batch_size, score_threshold=float(metadata[MIN_SCORE_KEY]),
        cal_cache_file=cal_cache_file if tensorrt else None)


def build_engine(onnx_bytes: bytes, engine_file: Path, *, data_type: str = "fp32",
                 cal_image_dir: Path | None = None, cal_cache_file: Path | None = None,
                 batch_size: int = 1, batches: int = 10, max_batch_size: int = 1,
                 max_workspace_size: int = DEFAULT_WORKSPACE_GB, min_batch_size: int = 1,
                 opt_batch_size: int | None = None,
                 strict_type_constraints: bool = False) -> Path:
    if data_type not in DATA_TYPES:
        raise EffdetError(f"data_type must be one of {DATA_TYPES}, got {data_type!r}")
    opt_batch_size = opt_batch_size or max_batch_size
    if not min_batch_size <= opt_batch_size <= max_batch_size:
        raise EffdetError(f"batch sizes must satisfy min <= opt <= max, got --min_batch_size "
                          f"{min_batch_size}, --opt_batch_size {opt_batch_size}, "
                          f"--max_batch_size {max_batch_size}")
    if engine_file.suffix == ORT_ENGINE_SUFFIX:
        if data_type == "fp16":
            log.warning("ONNX Runtime engines on CPU run fp32 or int8; building fp32")
        if data_type == "int8":
            onnx_bytes = quantized_model(onnx_bytes, cal_image_dir, cal_cache_file, batch_size,
                                         batches)
        build_ort_engine(onnx_bytes, engine_file)
    else:
        build_trt_engine(onnx_bytes, engine_file, data_type=data_type,
                         cal_image_dir=cal_image_dir, cal_cache_file=cal_cache_file,
                         batch_size=batch_size, batches=batches,
                         profile=(min_batch_size, opt_batch_size, max_batch_size),
                         max_workspace_size=max_workspace_size,
                         strict_type_constraints=strict_type_constraints)
    log.info("wrote %s", engine_file)
    return engine_file


def build_ort_engine(onnx_bytes: bytes, engine_file: Path) -> None:
    """Save ONNX Runtime's fully optimised graph (specific to this machine's CPU)."""
    import onnxruntime as ort

    options = session_options()
    with atomic_path(engine_file) as temp:
        options.optimized_model_filepath = str(temp)
        try:
            ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise ort_refusal(exc) from None


def ort_refusal(exc: Exception) -> EffdetError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return EffdetError(f"ONNX Runtime cannot load the model ({first}); a TensorRT-flavoured "
                       "graph (.trt.onnx) needs a TensorRT engine")


def quantized_model(onnx_bytes: bytes, image_dir: Path | None, cache_file: Path | None,
                    batch_size: int, batches: int) -> bytes:
    """The int8 QDQ model, calibrated on `calibration_batches` or read from `cache_file`."""
    from effdet.export.quantize import quantize_int8

    cache_file = calibration_cache(cache_file, image_dir)
    dims = onnx.load_from_string(onnx_bytes).graph.input[0].type.tensor_type.shape.dim
    image_size = (dims[1].dim_value, dims[2].dim_value)
    source = (None if image_dir is None else
              lambda: calibration_batches(image_dir, image_size, batch_size, batches))
    with tempfile.TemporaryDirectory(prefix="effdet-int8-") as folder:
        output = Path(folder) / "int8.onnx"
        try:
            quantize_int8(onnx_bytes, output, batches=source, cache_file=cache_file)
        except EffdetError:
            raise
        except Exception as exc:  # noqa: BLE001 - the quantiser's ONNX Runtime session
            raise ort_refusal(exc) from None
        return output.read_bytes()


def calibration_batches(image_dir: Path, image_size: tuple[int, int], batch_size: int,
                        batches: int) -> Iterator[np.ndarray]:
    """Up to `batches` full batches [batch_size, H, W, 3] float32, prepared as the graph expects."""
    import tensorflow as tf
    from PIL import Image

    from effdet.export.onnx_graph import network_input

    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if image_dir.is_dir() else []
    usable = min(len(files) // batch_size, batches)
    if usable == 0:
        raise EffdetError(f"{image_dir}: needs at least {batch_size} calibration images "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    if usable < batches:
        log.warning("%s: %d images make only %d of %d calibration batches", image_dir,
                    len(files), usable, batches)
    for b in range(usable):
        images = []
        for path in files[b * batch_size:(b + 1) * batch_size]:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            images.append(network_input(tf.constant(pixels), image_size)[0].numpy())
        yield np.ascontiguousarray(np.stack(images), dtype=np.float32)


def calibration_cache(cache_file: Path | None, image_dir: Path | None) -> Path:
    """The int8 calibration cache: read when it exists, otherwise made from `image_dir`."""
    if cache_file is None:
        raise EffdetError("int8 needs --cal_cache_file (read if present, written otherwise)")
    if not cache_file.exists() and image_dir is None:
        raise EffdetError(f"{cache_file}: no calibration cache yet; pass --cal_image_dir")
    return cache_file


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineUnavailable("TensorRT is not installed (pip install tensorrt, on a machine "
                                "with an NVIDIA GPU); use an .onnx engine file for ONNX "
                                "Runtime on CPU") from None
    return trt


def build_trt_engine(onnx_bytes: bytes, engine_file: Path, *, data_type: str,
                     cal_image_dir: Path | None, cal_cache_file: Path | None, batch_size: int,
                     batches: int, profile: tuple[int, int, int], max_workspace_size: int,
                     strict_type_constraints: bool = False) -> None:
    """`profile`: the (min, opt, max) batch sizes; `max_workspace_size` in GB."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # registers EfficientNMS_TRT
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError):
        builder = None
    if builder is None:
        raise EngineUnavailable("TensorRT found no CUDA GPU on this machine")
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EffdetError(f"TensorRT cannot parse the model: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, max_workspace_size << 30)
    image = network.get_input(0)
    height, width = image.shape[1], image.shape[2]
    shapes = builder.create_optimization_profile()
    shapes.set_shape(image.name, *[(batch, height, width, 3) for batch in profile])
    config.add_optimization_profile(shapes)
    if strict_type_constraints:  # tao_deploy's builder flag for TensorRT >= 8.6
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if data_type == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if data_type == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_calibrator(trt, (height, width), cal_image_dir,
                                                 cal_cache_file, batch_size, batches)
        config.set_calibration_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EffdetError("TensorRT could not build the engine (see the log above)")
    atomic_write_bytes(engine_file, bytes(serialized))


def make_calibrator(trt: Any, image_size: tuple[int, int], image_dir: Path | None,
                    cache_file: Path | None, batch_size: int, batches: int) -> Any:
    """An IInt8EntropyCalibrator2 over `calibration_batches`, reusing `cache_file` if present."""
    cache_file = calibration_cache(cache_file, image_dir)
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise EngineUnavailable("int8 calibration needs the CUDA Python bindings "
                                "(pip install cuda-python)") from None

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = (calibration_batches(image_dir, image_size, batch_size, batches)
                             if image_dir is not None else iter(()))
            self._device: int | None = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:  # calibration is over: TensorRT asks no more
                if self._device is not None:
                    cudart.cudaFree(self._device)
                    self._device = None
                return None
            if self._device is None:
                _, self._device = cudart.cudaMalloc(batch.nbytes)
            cudart.cudaMemcpy(self._device, batch.ctypes.data, batch.nbytes,
                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_file, bytes(cache))

    return Calibrator()
