"""Time D0 inference end to end (network + NMS) on CPU: the Keras graph vs the fp32 and the
int8 ONNX Runtime engines that `effdet export` + `effdet gen_trt_engine --engine_file X.onnx
[--data_type int8]` build, interleaved (A B C A B C ...) so that a shared machine's changing
load hits every path alike.

    PYTHONPATH=. python scripts/bench_infer.py [--size 512] [--batches 1,8] [--runs 10] [--xla]

The model has random weights with 90 classes (COCO); its class head is biased so that every
image yields the full max_detections boxes, the worst case for NMS. The int8 engine is
calibrated on random images (speed does not depend on the ranges). Every path gets the same
[B, H, W, 3] 0–255 input (already resized) and returns the four detection outputs. ONNX
Runtime's threads do not spin between runs here, so that one engine's idle threads do not slow
the path timed after it; a lone session with spinning is ~7 % faster than these figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from effdet.anchors import anchors_for
from effdet.data.preprocess import normalize_image
from effdet.model.saving import Architecture, save_model
from effdet.model.variants import get_variant
from effdet.postprocess import postprocess
from effdet.spec.config import ModelConfig
from effdet.runtimes.ort_options import session_options
from effdet.tasks.engine import gen_trt_engine
from effdet.tasks.export import export

KEY = "bench-infer-key"
NUM_CLASSES = 91  # the spec's count: 90 COCO classes + background
MAX_DETECTIONS = 100


def build(size: int) -> tuple[Architecture, tf.keras.Model]:
    architecture = Architecture(ModelConfig(), NUM_CLASSES, (size, size),
                                get_variant("efficientdet-d0"))
    tf.keras.utils.set_random_seed(0)
    model = architecture.build()
    for variable in model.weights:
        # The focal prior bias (-4.6) leaves random scores near 0.01; zero it so that NMS
        # sees many candidates above the floor, as a trained model on a busy image does.
        if variable.shape.rank == 1 and np.allclose(variable.numpy(), -np.log(99.0)):
            variable.assign(tf.zeros_like(variable))
    return architecture, model


def keras_detector(architecture: Architecture, model: tf.keras.Model,
                   jit: bool) -> Callable[[tf.Tensor], dict]:
    anchors = anchors_for(architecture.model_config, architecture.image_size)

    @tf.function(jit_compile=jit)
    def detect(images: tf.Tensor) -> dict[str, tf.Tensor]:
        class_outputs, box_outputs = model(normalize_image(images), training=False)
        return postprocess(class_outputs, box_outputs, anchors, architecture.head_classes,
                           max_detections=MAX_DETECTIONS, min_score=0.001, nms_method="hard")

    return lambda images: {k: v.numpy() for k, v in detect(tf.constant(images)).items()}


def ort_detector(engine: Path) -> Callable[[np.ndarray], dict]:
    import onnxruntime as ort

    options = session_options()
    # An idle session's threads spin after each run and take the cores from the path timed
    # next (measured: a D0 session alone 73 ms, interleaved with three others 118 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(engine), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    return lambda images: dict(zip(names, session.run(None, {input_name: images})))


def interleaved_ms(paths: dict[str, Callable[[np.ndarray], dict]], images: np.ndarray,
                   runs: int) -> dict[str, list[float]]:
    """Milliseconds of each path over `runs` rounds, one call of every path per round."""
    for run in paths.values():
        for _ in range(3):  # warm-up: tracing, XLA compilation, ORT allocations
            run(images)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, run in paths.items():
            start = time.perf_counter()
            run(images)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def calibration_images(folder: Path, size: int, count: int) -> Path:
    images = folder / "calibration"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    return images


def export_engines(architecture: Architecture, model: tf.keras.Model,
                   folder: Path) -> tuple[Path, Path]:
    save_model(folder / "model.tlt", KEY, architecture, model, manifest={})
    spec = folder / "spec.txt"
    size = architecture.image_size
    # Export reads only the eval_config; the other fields are there because TAO requires them.
    spec.write_text(f'dataset_config {{ num_classes: {NUM_CLASSES} image_size: "{size[0]},'
                    f'{size[1]}" training_file_pattern: "-" validation_file_pattern: "-" '
                    'validation_json_file: "-" }\n'
                    f"eval_config {{ max_detections_per_image: {MAX_DETECTIONS} "
                    "min_score_thresh: 0.001 eval_batch_size: 1 eval_epoch_cycle: 1 "
                    "eval_samples: 1 }\n"
                    "training_config { train_batch_size: 1 checkpoint_period: 1 "
                    "num_examples_per_epoch: 1 num_epochs: 1 lr_warmup_init: 0.008 "
                    "learning_rate: 0.08 }\n"
                    'model_config { model_name: "efficientdet-d0" }\n')
    result = export(folder / "model.tlt", spec, folder / "model.etlt", KEY)
    fp32 = gen_trt_engine(result.onnx_path, None, folder / "model.fp32.onnx")
    int8 = gen_trt_engine(result.onnx_path, None, folder / "model.int8.onnx", data_type="int8",
                          cal_image_dir=calibration_images(folder, size[0], 8),
                          cal_cache_file=folder / "calibration.json", batch_size=4, batches=2)
    return fp32, int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--xla", action="store_true", help="also Keras + XLA (compiles for "
                        "minutes; ~10x slower than the graph on CPU)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    architecture, model = build(args.size)
    with tempfile.TemporaryDirectory() as folder:
        fp32, int8 = export_engines(architecture, model, Path(folder))
        paths = {"keras graph": keras_detector(architecture, model, jit=False),
                 "ort fp32": ort_detector(fp32), "ort int8": ort_detector(int8)}
        if args.xla:
            paths["keras graph + XLA"] = keras_detector(architecture, model, jit=True)
        rng = np.random.default_rng(0)
        print(f"D0 {args.size}x{args.size}, 90 classes, network + NMS (≤{MAX_DETECTIONS} boxes), "
              f"CPU, {args.runs} interleaved rounds after warm-up; median [min–max] ms")
        for batch in batches:
            images = rng.uniform(0, 255, (batch, args.size, args.size, 3)).astype(np.float32)
            times = interleaved_ms(paths, images, args.runs)
            medians = {name: statistics.median(values) for name, values in times.items()}
            for name, values in times.items():
                ms = medians[name]
                print(f"  batch {batch} {name:18} {ms:8.1f} [{min(values):7.1f}–{max(values):7.1f}]"
                      f" ms {ms / batch:7.1f} ms/image  {medians['keras graph'] / ms:5.2f}x Keras "
                      f"graph", flush=True)
            print(f"  batch {batch}: ort fp32 {medians['keras graph'] / medians['ort fp32']:.2f}x "
                  f"Keras graph; ort int8 {medians['ort fp32'] / medians['ort int8']:.2f}x ort "
                  "fp32", flush=True)


if __name__ == "__main__":
    main()
