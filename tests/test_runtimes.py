"""Runtimes: Keras (.tlt), ONNX Runtime (.onnx, .etlt) agree; TensorRT absent is exit 2."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from effdet.anchors import anchors_for
from effdet.data.preprocess import MEAN_RGB, normalize_image
from effdet.errors import EffdetError
from effdet.export.onnx_graph import LABELS_KEY
from effdet.formats.etlt import write_etlt
from effdet.model.saving import Architecture, save_model
from effdet.model.variants import get_variant
from effdet.postprocess import postprocess
from effdet.runtimes import open_detector
from effdet.runtimes.base import Detections, letterbox, to_original
from effdet.spec.config import ExperimentConfig, ModelConfig
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
KEY = "runtimes-test-Key-3"
SIZE = (128, 128)
MAX_DETECTIONS = 20
CLASSES = {"1": "red circle", "2": "square", "3": "triangle", "4": "diamond"}
TINY = {"fpn_num_filters": 16, "fpn_cell_repeats": 1, "box_class_repeats": 1,
        "width_coefficient": 0.25, "depth_coefficient": 0.25}
TENSORRT_MISSING = ("TensorRT cannot be installed on this machine: its wheels fetch the "
                    "libraries from NVIDIA's index")


def tiny_model(seed: int = 0) -> tuple[Architecture, tf.keras.Model]:
    """A tiny random network whose class head is sharpened so that it detects plenty.

    Random init leaves every score near the 0.01 focal prior with near-ties everywhere; a
    zero bias and a larger class-head kernel spread the scores so runtimes order them alike.
    """
    architecture = Architecture(ModelConfig(), 5, SIZE,
                                get_variant("efficientdet-d0").replace(**TINY))
    tf.keras.utils.set_random_seed(seed)
    model = architecture.build()
    prior = -math.log(99.0)  # the focal-loss prior bias of the class head
    heads = [v.path.rsplit("/", 1)[0] for v in model.weights
             if v.numpy().ndim == 1 and np.allclose(v.numpy(), prior)]
    for variable in model.weights:
        if variable.path.rsplit("/", 1)[0] in heads:
            scale = 0.0 if variable.numpy().ndim == 1 else 60.0
            variable.assign(variable.numpy() * scale)
    return architecture, model


def save_tiny_tlt(path: Path, key: str = KEY) -> None:
    architecture, model = tiny_model()
    save_model(path, key, architecture, model, manifest={"classes": CLASSES})


def tiny_onnx(min_score: float = 0.0) -> bytes:
    """The export's signature: input 0..255 [B,H,W,3] → the four outputs (network pixels)."""
    import tf2onnx

    architecture, model = tiny_model()
    anchors = anchors_for(architecture.model_config, SIZE)

    @tf.function(input_signature=[tf.TensorSpec([None, *SIZE, 3], tf.float32, name="input")])
    def exported(images: tf.Tensor) -> dict[str, tf.Tensor]:
        class_outputs, box_outputs = model(normalize_image(images), training=False)
        # Same NMS as the Keras runtime's detector, so the two must agree box for box.
        outputs = postprocess(class_outputs, box_outputs, anchors, architecture.head_classes,
                              max_detections=MAX_DETECTIONS, min_score=min_score,
                              nms_method="hard")
        return {name: tf.identity(value, name=name) for name, value in outputs.items()}

    proto, _ = tf2onnx.convert.from_function(exported, input_signature=exported.input_signature,
                                             opset=17)
    labels = ["background", *(CLASSES[str(i)] for i in range(1, len(CLASSES) + 1))]
    proto.metadata_props.add(key=LABELS_KEY, value=json.dumps(labels))
    return proto.SerializeToString()


def config(min_score: float = 0.3) -> ExperimentConfig:
    base = ExperimentConfig()
    return dataclasses.replace(
        base, dataset_config=dataclasses.replace(base.dataset_config, num_classes=5,
                                                 image_size=SIZE),
        eval_config=dataclasses.replace(base.eval_config, min_score_thresh=min_score,
                                        max_detections_per_image=MAX_DETECTIONS))


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size, dtype=np.uint8)
            for size in [(96, 160, 3), (200, 120, 3), (128, 128, 3), (50, 300, 3)]]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runtimes")
    save_tiny_tlt(root / "m.tlt")
    onnx_bytes = tiny_onnx()
    (root / "m.onnx").write_bytes(onnx_bytes)
    write_etlt(root / "m.etlt", onnx_bytes, KEY)
    return {"tlt": root / "m.tlt", "onnx": root / "m.onnx", "etlt": root / "m.etlt"}


def assert_same(left: list[Detections], right: list[Detections]) -> None:
    """Same detections per image, matched one to one (near-tied scores may swap order)."""
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert len(a) == len(b) > 0
        distance = np.abs(a.boxes[:, None, :] - b.boxes[None, :, :]).max(axis=2)
        match = distance.argmin(axis=1)
        assert len(set(match.tolist())) == len(a)
        np.testing.assert_allclose(distance[np.arange(len(a)), match], 0.0, atol=1e-3)
        np.testing.assert_array_equal(a.classes, b.classes[match])
        np.testing.assert_allclose(a.scores, b.scores[match], atol=1e-4)


def test_onnx_and_etlt_match_keras(models):
    keras_detector = open_detector(models["tlt"], KEY, config())
    assert keras_detector.class_names == {1: "red circle", 2: "square", 3: "triangle",
                                          4: "diamond"}
    reference = keras_detector.detect(images())
    for image, found in zip(images(), reference):
        height, width = image.shape[:2]
        assert np.all(found.scores > 0.3)
        assert np.all(found.boxes >= 0) and np.all(found.boxes[:, [0, 2]] <= width)
        assert np.all(found.boxes[:, [1, 3]] <= height)
        assert found.boxes.dtype == np.float32 and found.classes.min() >= 1
    for runtime in (open_detector(models["onnx"], None, config()),
                    open_detector(models["etlt"], KEY, config())):
        assert runtime.class_names == keras_detector.class_names
        assert_same(runtime.detect(images()), reference)


def test_min_score_filters(models):
    low = open_detector(models["onnx"], None, config(), min_score=0.0).detect(images())
    threshold = float(np.median(np.concatenate([found.scores for found in low])))
    high = open_detector(models["onnx"], None, config(), min_score=threshold).detect(images())
    assert 0 < sum(map(len, high)) < sum(map(len, low))
    for a, b in zip(low, high):
        keep = a.scores > threshold
        np.testing.assert_array_equal(a.scores[keep], b.scores)


def test_letterbox_pads_with_mean_and_maps_boxes_back():
    image = np.full((64, 32, 3), 200, np.uint8)
    batch = letterbox([image], SIZE, MEAN_RGB)
    assert batch.scales[0] == 2.0 and tuple(batch.sizes[0]) == (64, 32)
    np.testing.assert_allclose(batch.images[0, :, :64], 200.0)
    np.testing.assert_allclose(batch.images[0, :, 64:], np.broadcast_to(MEAN_RGB, (128, 64, 3)),
                               rtol=1e-6)
    normalised = letterbox([image], SIZE, (0.0, 0.0, 0.0), normalize=True)
    np.testing.assert_allclose(normalize_image(batch.images).numpy(), normalised.images,
                               atol=1e-5)
    network = Detections(np.array([[10.0, 20.0, 100.0, 140.0]], np.float32),
                         np.array([0.9], np.float32), np.array([2]))
    np.testing.assert_allclose(to_original(network, 2.0, (64, 32)).boxes,
                               [[5.0, 10.0, 32.0, 64.0]])


def test_bad_model_paths(tmp_path):
    with pytest.raises(EffdetError, match="unknown model type '.pb'"):
        open_detector(tmp_path / "m.pb", KEY, config())
    with pytest.raises(EffdetError, match="key is needed"):
        open_detector(tmp_path / "m.etlt", None, config())
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(EffdetError, match="not a loadable ONNX model"):
        open_detector(tmp_path / "bad.onnx", None, config())


def test_engine_without_tensorrt_is_exit_2(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(EffdetError, match="m.engine: file not found"):
        open_detector(tmp_path / "m.engine", None, config())
    (tmp_path / "m.engine").write_bytes(b"an engine from a GPU machine")
    with pytest.raises(EffdetError, match="TensorRT") as error:
        open_detector(tmp_path / "m.engine", None, config())
    assert error.value.exit_code == 2


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason=TENSORRT_MISSING)
def test_tensorrt_engine_matches_onnx_on_the_best_box(tmp_path, models):
    import tensorrt as trt

    from effdet.tasks.export import export

    result = export(models["tlt"], write_spec(tmp_path), tmp_path / "exported.etlt", KEY)
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # EfficientNMS_TRT
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(result.trt_onnx_path.read_bytes())
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, *SIZE, 3), (2, *SIZE, 3), (4, *SIZE, 3))
    build_config = builder.create_builder_config()
    build_config.add_optimization_profile(profile)
    (tmp_path / "m.engine").write_bytes(builder.build_serialized_network(network, build_config))
    engine = open_detector(tmp_path / "m.engine", None, config()).detect(images())
    onnx = open_detector(result.onnx_path, None, config()).detect(images())
    assert_same_best(engine, onnx)


def run_inference_cli(tmp_path: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    spec = tmp_path / "spec.txt"
    spec.write_text(complete('dataset_config { num_classes: 5 image_size: "128,128" }\n'))
    (tmp_path / "images").mkdir()
    Image.fromarray(images()[0]).save(tmp_path / "images" / "a.png")
    env = {k: v for k, v in os.environ.items() if k not in ("EFFDET_KEY", "EFFDET_DEBUG")}
    return subprocess.run(
        [sys.executable, "-m", "effdet", "inference", "-i", str(tmp_path / "images"),
         "-o", str(tmp_path / "out"), "-e", str(spec), "-m", str(model), *extra],
        check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_cli_onnx_needs_no_key(models, tmp_path):
    result = run_inference_cli(tmp_path, models["onnx"], "-t", "0.3", "-l", str(tmp_path / "l"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "a.png").is_file()
    # Names from the model's metadata.
    names = {line.split()[0] for line in (tmp_path / "l" / "a.txt").read_text().splitlines()}
    assert names and names <= {"red_circle", "square", "triangle", "diamond"}


def test_cli_engine_without_tensorrt_one_line_exit_2(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    (tmp_path / "m.engine").write_bytes(b"an engine from a GPU machine")
    result = run_inference_cli(tmp_path, tmp_path / "m.engine", "-k", "Secret-Engine-Key-1")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("effdet: error: ") and "TensorRT" in last
    assert "Traceback" not in result.stderr
    assert "Secret-Engine-Key-1" not in result.stdout + result.stderr


def write_spec(directory: Path) -> Path:
    spec = directory / "spec.txt"
    spec.write_text(complete('dataset_config { num_classes: 5 image_size: "128,128" }\n'
                             "eval_config { max_detections_per_image: 20 }\n"))
    return spec


def assert_same_best(left: list[Detections], right: list[Detections]) -> None:
    """Two NMS implementations (EfficientNMS, ONNX) agree on each image's first pick."""
    for a, b in zip(left, right, strict=True):
        assert len(a) > 0 and len(b) > 0
        assert a.classes[0] == b.classes[0]
        np.testing.assert_allclose(a.scores[0], b.scores[0], atol=1e-4)
        np.testing.assert_allclose(a.boxes[0], b.boxes[0], atol=1e-3)


def test_exported_etlt_runs_and_agrees_on_the_best_box(models, tmp_path):
    from effdet.tasks.export import export

    result = export(models["tlt"], write_spec(tmp_path), tmp_path / "exported.etlt", KEY)
    exported = open_detector(result.etlt_path, KEY, config())
    # Export and the .tlt use the same hard NMS: the same detections.
    assert_same(exported.detect(images()),
                     open_detector(models["tlt"], KEY, config()).detect(images()))
