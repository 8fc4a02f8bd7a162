"""export: a tiny .tlt (EMA weights) -> ONNX matching Keras + hard NMS, .etlt, TensorRT graph."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

from effdet.anchors import anchors_for
from effdet.data.preprocess import MEAN_RGB, normalize_image
from effdet.errors import EffdetError
from effdet.export import deepstream, onnx_graph, trt_graph
from effdet.formats.etlt import read_etlt
from effdet.model.saving import Architecture, save_model
from effdet.model.variants import get_variant
from effdet.postprocess import EMPTY_LOGIT, decode_clipped, flatten_outputs, postprocess
from effdet.spec.config import ModelConfig
from effdet.tasks.export import export
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
KEY = "export-test-Key-3"
TINY = {"fpn_num_filters": 16, "fpn_cell_repeats": 1, "box_class_repeats": 1,
        "width_coefficient": 0.25, "depth_coefficient": 0.25}
MAX_DETECTIONS = 20
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
              {"id": 3, "name": "triangle"}, {"id": 4, "name": "diamond"}]


def tiny_architecture() -> Architecture:
    return Architecture(ModelConfig(), 5, (128, 128), get_variant("efficientdet-d0").replace(**TINY))


def write_spec(root: Path) -> Path:
    val_json = root / "val.json"
    val_json.write_text(json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))
    spec = root / "spec.txt"
    spec.write_text(complete(f"""
dataset_config {{
  num_classes: 5
  image_size: "128,128"
  validation_json_file: "{val_json}"
}}
eval_config {{
  min_score_thresh: 0.3
  max_detections_per_image: {MAX_DETECTIONS}
}}
"""))
    return spec


def spread_outputs(model) -> None:
    """Give the untrained heads a trained model's range: scores spread over (0, 1) and boxes
    off their anchors. (Untrained, the features reaching the heads have a spread of ~1e-4:
    every score sits at the 0.01 prior and every box on its anchor.)"""
    scales = {"class_net_predict/pointwise_kernel": 3e3, "box_net_predict/pointwise_kernel": 5e2}
    for variable in model.weights:
        if variable.path == "class_net_predict/bias":
            variable.assign(np.full(variable.shape, -2.0, np.float32))
        elif variable.path in scales:
            variable.assign(variable * scales[variable.path])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(11)
    architecture = tiny_architecture()
    raw = architecture.build()
    # The EMA weights come from a different network: export must use them, not the raw ones.
    ema_model = architecture.build()
    spread_outputs(ema_model)
    ema = {v.path: np.asarray(v) for v in ema_model.weights}
    model_path = root / "m.tlt"
    save_model(model_path, KEY, architecture, raw, manifest={"epoch": 3}, ema=ema)
    spec = write_spec(root)
    result = export(model_path, spec, root / "out" / "m.etlt", KEY)
    return {"root": root, "spec": spec, "model_path": model_path, "result": result,
            "ema_model": ema_model, "architecture": architecture}


def demo_images() -> tf.Tensor:
    """Two images of other sizes than the network's, prepared as the graph expects."""
    rng = np.random.default_rng(5)
    images = []
    for height, width in [(100, 160), (140, 90)]:
        pixels = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        pixels[20:60, 30:80] = [250, 20, 20]  # a flat block gives the network some structure
        images.append(onnx_graph.network_input(tf.constant(pixels), (128, 128))[0])
    return tf.stack(images)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter_h = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    inter_w = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = inter_h * inter_w
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def assert_same_detections(got: dict, expected: dict) -> None:
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    for b, (count,) in enumerate(expected["num_detections"]):
        assert count > 0
        boxes = got["detection_boxes"][b, :count]
        expected_boxes = expected["detection_boxes"][b, :count]
        # Boxes clipped to nothing at the image border have no IoU: compare their corners.
        same = (box_iou(boxes, expected_boxes) >= 0.99) | np.all(
            np.abs(boxes - expected_boxes) <= 1e-2, axis=1)
        assert same.all(), (boxes[~same], expected_boxes[~same])
        np.testing.assert_allclose(got["detection_scores"][b, :count],
                                   expected["detection_scores"][b, :count], atol=1e-3)
        np.testing.assert_array_equal(got["detection_classes"][b, :count],
                                      expected["detection_classes"][b, :count])


def keras_detections(model, architecture: Architecture, images: tf.Tensor) -> dict:
    class_outputs, box_outputs = model(normalize_image(images), training=False)
    outputs = postprocess(class_outputs, box_outputs,
                          anchors_for(architecture.model_config, architecture.image_size),
                          architecture.head_classes, max_detections=MAX_DETECTIONS,
                          min_score=onnx_graph.EXPORT_MIN_SCORE, nms_method="hard")
    return {k: v.numpy() for k, v in outputs.items()}


def run_onnx(path: Path, images: tf.Tensor) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {onnx_graph.INPUT_NAME: images.numpy()})))


def test_onnx_passes_checker_and_matches_keras_with_hard_nms(exported):
    path = exported["result"].onnx_path
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [onnx_graph.INPUT_NAME]
    assert [o.name for o in model.graph.output] == list(onnx_graph.OUTPUT_NAMES)
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}
    metadata = onnx_graph.read_metadata(model)
    assert json.loads(metadata[onnx_graph.LABELS_KEY]) == [
        "background", "circle", "square", "triangle", "diamond"]
    assert float(metadata[onnx_graph.MIN_SCORE_KEY]) == 0.3

    images = demo_images()
    got = run_onnx(path, images)
    assert got["num_detections"].dtype == np.int32 and got["num_detections"].shape == (2, 1)
    assert got["detection_boxes"].shape == (2, MAX_DETECTIONS, 4)
    assert got["detection_classes"].dtype == np.int32
    assert_same_detections(got, keras_detections(exported["ema_model"],
                                                 exported["architecture"], images))
    for b, (count,) in enumerate(got["num_detections"]):  # boxes with no area are dropped
        boxes = got["detection_boxes"][b, :count]
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    # Dynamic batch: one image alone gives its row of the batch.
    single = run_onnx(path, images[1:])
    np.testing.assert_allclose(single["detection_scores"][0], got["detection_scores"][1],
                               atol=1e-5)


def test_network_input_pads_with_the_mean_colour():
    image = tf.fill([64, 32, 3], 200.0)
    prepared, scale = onnx_graph.network_input(image, (128, 128))
    assert float(scale) == 2.0
    np.testing.assert_allclose(prepared[:, :64].numpy(), 200.0, atol=1e-4)
    np.testing.assert_allclose(prepared[:, 64:].numpy(), np.broadcast_to(MEAN_RGB, (128, 64, 3)),
                               atol=1e-4)
    np.testing.assert_allclose(normalize_image(prepared)[:, 64:].numpy(), 0.0, atol=1e-6)


def test_etlt_holds_the_onnx_bytes_and_needs_the_key(exported):
    result = exported["result"]
    assert read_etlt(result.etlt_path, KEY) == result.onnx_path.read_bytes()
    assert result.etlt_path.read_bytes()[:4] == b"\0\0\0\0"
    with pytest.raises(EffdetError, match="wrong key") as error:
        read_etlt(result.etlt_path, "not-the-key")
    assert "\n" not in str(error.value)


def test_wrong_model_key_is_one_line_error(exported, tmp_path):
    with pytest.raises(EffdetError, match="wrong key") as error:
        export(exported["model_path"], exported["spec"], tmp_path / "x.etlt", "not-the-key")
    assert "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())


def test_existing_outputs_are_kept_without_force(exported, tmp_path):
    target = tmp_path / "m.etlt"
    (tmp_path / "m.trt.onnx").write_bytes(b"old")
    with pytest.raises(EffdetError, match="already exists.*--force"):
        export(exported["model_path"], exported["spec"], target, KEY)
    assert (tmp_path / "m.trt.onnx").read_bytes() == b"old" and not target.exists()
    result = export(exported["model_path"], exported["spec"], target, KEY, force=True)
    assert onnx.load(str(result.trt_onnx_path)).graph.node


def test_tensorrt_graph_has_the_efficient_nms_plugin(exported):
    model = onnx.load(str(exported["result"].trt_onnx_path))
    graph = model.graph
    nms = [n for n in graph.node if n.op_type == trt_graph.PLUGIN_OP]
    assert len(nms) == 1
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nms[0].attribute}
    assert attributes == {"plugin_version": b"1", "background_class": -1,
                          "max_output_boxes": MAX_DETECTIONS,
                          "score_threshold": pytest.approx(onnx_graph.EXPORT_MIN_SCORE),
                          "iou_threshold": pytest.approx(0.5), "score_activation": 1,
                          "class_agnostic": 0, "box_coding": 1}
    assert list(nms[0].output) == list(onnx_graph.OUTPUT_NAMES)
    assert [i.name for i in graph.input] == [onnx_graph.INPUT_NAME]

    def signature(value):
        tensor = value.type.tensor_type
        return tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]

    assert signature(graph.input[0]) == (onnx.TensorProto.FLOAT, ["batch", 128, 128, 3])
    assert [signature(o) for o in graph.output] == [
        (onnx.TensorProto.INT32, ["batch", 1]),
        (onnx.TensorProto.FLOAT, ["batch", MAX_DETECTIONS, 4]),
        (onnx.TensorProto.FLOAT, ["batch", MAX_DETECTIONS]),
        (onnx.TensorProto.INT32, ["batch", MAX_DETECTIONS])]

    # Inputs: box codes, class logits (sigmoid in the plugin), anchors as an embedded constant.
    architecture = exported["architecture"]
    anchors = anchors_for(architecture.model_config, architecture.image_size)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    codes, logits, anchor_name = nms[0].input
    np.testing.assert_array_equal(constants[anchor_name], onnx_graph.anchors_center_size(anchors))
    assert constants[anchor_name].shape == (1, anchors.boxes.shape[0], 4)
    ymin, xmin, ymax, xmax = anchors.boxes[0]
    np.testing.assert_allclose(constants[anchor_name][0, 0],
                               [(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin])
    # The same network as the ONNX Runtime graph: its pre-NMS outputs equal the Keras head's.
    head = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    del head.graph.node[-1]
    del head.graph.output[:]
    head.graph.output.extend([onnx.helper.make_tensor_value_info(codes, onnx.TensorProto.FLOAT, None),
                              onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT,
                                                                 None)])
    session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    images = demo_images()
    got_codes, got_logits = session.run(None, {onnx_graph.INPUT_NAME: images.numpy()})
    class_outputs, box_outputs = exported["ema_model"](normalize_image(images), training=False)
    assert got_logits.shape == (2, anchors.boxes.shape[0], 4)
    keras_logits, keras_codes = flatten_outputs(class_outputs, box_outputs, 4)
    np.testing.assert_allclose(got_codes, keras_codes.numpy(), atol=1e-4)
    # Anchors whose box is empty once clipped to the input never reach the plugin's top-k.
    boxes = decode_clipped(tf.constant(got_codes), anchors).numpy()
    empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
    assert (got_logits[empty] == EMPTY_LOGIT).all()
    np.testing.assert_allclose(got_logits[~empty], keras_logits.numpy()[~empty], atol=1e-4)


def test_deepstream_files_next_to_the_etlt(exported):
    result = exported["result"]
    assert result.labels_path == result.etlt_path.parent / "labels.txt"
    # deepstream_tao_apps' efficientdet_d0_512_labels.txt: line 0 is category id 1 ("person").
    assert result.labels_path.read_text().splitlines() == [
        "circle", "square", "triangle", "diamond"]
    config = dict(line.split("=", 1) for line in result.nvinfer_config_path.read_text()
                  .splitlines() if "=" in line)
    assert config["onnx-file"] == "m.trt.onnx"
    assert config["labelfile-path"] == "labels.txt"
    assert config["infer-dims"] == "3;128;128" and config["network-input-order"] == "1"
    assert config["output-blob-names"] == (
        "num_detections;detection_boxes;detection_scores;detection_classes")
    # The keys and values of deepstream_tao_apps' configs/nvinfer/efficientdet_tao/
    # pgie_d0_512_tao_config.txt that do not depend on the model.
    assert {k: config[k] for k in ("gpu-id", "net-scale-factor", "offsets", "model-color-format",
                                   "network-input-order", "maintain-aspect-ratio", "interval",
                                   "gie-unique-id", "cluster-mode")} == {
        "gpu-id": "0", "net-scale-factor": "1.0", "offsets": "0;0;0", "model-color-format": "0",
        "network-input-order": "1", "maintain-aspect-ratio": "1", "interval": "0",
        "gie-unique-id": "1", "cluster-mode": "4"}
    assert config["num-detected-classes"] == "4" and config["network-mode"] == "0"
    assert config["net-scale-factor"] == "1.0" and config["pre-cluster-threshold"] == "0.3"
    assert config["parse-bbox-func-name"] == "NvDsInferParseCustomEfficientDetTAO"
    assert "model-engine-file" not in config


def test_deepstream_labels_name_the_channel_efficientnms_reports(exported):
    """NvDsInferParseCustomEfficientDetTAO takes EfficientNMS_TRT's detection_classes as
    the label index; those are logit channels (background_class -1), which the ONNX Runtime
    graph reports as category id = channel + 1. A channel-0 detection must read line 0."""
    result = exported["result"]
    labels = result.labels_path.read_text().splitlines()
    nms = next(n for n in onnx.load(str(result.trt_onnx_path)).graph.node
               if n.op_type == trt_graph.PLUGIN_OP)
    assert onnx.helper.get_attribute_value(
        next(a for a in nms.attribute if a.name == "background_class")) == -1
    names = {c["id"]: c["name"] for c in CATEGORIES}
    assert labels[0] == names[1]  # channel 0: the first real class, not "background"
    outputs = run_onnx(result.onnx_path, demo_images())
    count = int(outputs["num_detections"][0].item())
    categories = outputs["detection_classes"][0, :count]
    assert count > 0
    for category in categories:
        assert labels[category - 1] == names[category]  # channel = category id - 1


def test_class_names_fall_back_to_ids(tmp_path, caplog):
    assert deepstream.class_names(3, None) == ["background", "class_1", "class_2"]
    assert deepstream.class_names(2, tmp_path / "missing.json") == ["background", "class_1"]
    assert "no class names" in caplog.text


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_export_with_onnx_runtime_engine(exported, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("EFFDET_KEY", "EFFDET_DEBUG", "PYTHONHASHSEED")}
    args = ["export", "-m", str(exported["model_path"]), "-e", str(exported["spec"]),
            "-o", str(tmp_path / "cli.etlt"), "-k", KEY, "--engine_file",
            str(tmp_path / "cli.ort.onnx")]
    result = subprocess.run([sys.executable, "-m", "effdet", *args], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=240, check=False)
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout + result.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert {"cli.onnx", "cli.etlt", "cli.trt.onnx", "cli.ort.onnx", "labels.txt",
            "nvinfer_config.txt"} <= names
    images = demo_images()
    assert_same_detections(run_onnx(tmp_path / "cli.ort.onnx", images),
                           run_onnx(exported["result"].onnx_path, images))
    # Exporting the same .tlt again, in another process, gives the same bytes: DVC and
    # Snakemake see nothing stale. Without PYTHONHASHSEED, as a user runs it, `effdet` fixes
    # the seed itself (tf2onnx's optimisers iterate over sets of names). Both exports come
    # from fresh processes: an export inside this test process depends on what the suite ran
    # before it. Digests, not bytes, so a failure prints two lines, not a diff of megabytes.
    other = tmp_path / "again"
    other.mkdir()
    elsewhere = [str(other / Path(a).name) if a.startswith(str(tmp_path)) else a for a in args]
    rerun = subprocess.run([sys.executable, "-m", "effdet", *elsewhere], capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=240, check=False)
    assert rerun.returncode == 0, rerun.stderr
    for name in ("cli.onnx", "cli.trt.onnx", "cli.etlt"):
        assert digest(tmp_path / name) == digest(other / name), name
    again = subprocess.run([sys.executable, "-m", "effdet", *args], capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=240, check=False)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].endswith(
        "already exists (pass --force to overwrite)")


def test_nearest_upsampling_follows_automl_at_odd_sizes():
    # A 160 px side gives P7 2 -> P6 3 and P6 3 -> P5 5: not 2x multiples. automl/TAO take
    # source pixel floor(dst * in / out) (resize_nearest_neighbor, no half-pixel centres).
    from effdet.model.layers import NearestResize

    features = np.random.default_rng(0).standard_normal((2, 3, 2, 4)).astype(np.float32)
    layer = NearestResize(5, 3)
    expected = features[:, [d * 3 // 5 for d in range(5)]][:, :, [d * 2 // 3 for d in range(3)]]
    np.testing.assert_array_equal(layer(features), expected)

    @tf.function(input_signature=[tf.TensorSpec((None, 3, 2, 4), tf.float32, "image")])
    def resize(images):
        return {"resized": layer(images)}

    session = ort.InferenceSession(onnx_graph.to_onnx(resize, ("resized",)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"image": features})[0], expected)


def test_nearest_upsampling_trains_by_repeating_the_same_pixels():
    """At exact multiples training repeats rows and columns (XLA can differentiate that),
    inference resizes: the same pixels either way."""
    from effdet.model.layers import NearestResize

    features = np.random.default_rng(1).standard_normal((2, 4, 3, 5)).astype(np.float32)
    layer = NearestResize(8, 6)
    np.testing.assert_array_equal(layer(features, training=True),
                                  layer(features, training=False))
    np.testing.assert_array_equal(layer(features, training=True),
                                  keras.layers.UpSampling2D(2)(features))


def test_onnx_runtime_graph_keeps_the_bifpn_in_conv_layout(exported):
    """Up-sampling is one ONNX Resize (not tf.repeat's Tile/Reshape chains) and no fusion
    weight on an NCHW map is left as a scalar Mul; the TensorRT graph keeps its Muls."""
    model = onnx.load(str(exported["result"].onnx_path))
    ops = [node.op_type for node in model.graph.node]
    assert "Tile" not in ops and ops.count("Resize") == 4  # P7 -> P3, one BiFPN cell
    for node in model.graph.node:
        if node.op_type == "Resize":
            modes = {a.name: a.s for a in node.attribute}
            assert modes["coordinate_transformation_mode"] == b"asymmetric"
            assert modes["nearest_mode"] == b"floor"
    constants = {t.name: t.dims for t in model.graph.initializer}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert not [n for n in model.graph.node if n.op_type == "Mul"
                and any(np.prod(constants.get(name, [0])) == 1 for name in n.input)
                and any(producers.get(name) in onnx_graph.NCHW_PRODUCERS for name in n.input)]
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)
                 and all(d == 1 for d in constants[n.input[1]][1:])]
    assert depthwise
    trt = onnx.load(str(exported["result"].trt_onnx_path))
    assert len([n for n in trt.graph.node if n.op_type == "Conv"]) == ops.count("Conv") - len(
        depthwise)


def test_scalar_scales_of_feature_maps_become_depthwise_convs():
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(2)
    constants = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                 "half": np.array(0.5, np.float32), "third": np.array([1 / 3], np.float32),
                 "per_channel": rng.normal(size=(1, 4, 1, 1)).astype(np.float32)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["conv", "half"], ["a"]),
         helper.make_node("MaxPool", ["conv"], ["pool"], kernel_shape=[1, 1]),
         helper.make_node("Mul", ["third", "pool"], ["b"]),
         helper.make_node("Mul", ["conv", "per_channel"], ["c"]),
         helper.make_node("Sum", ["a", "b", "c"], ["s"]),
         helper.make_node("Relu", ["s"], ["r"]),
         helper.make_node("Mul", ["r", "half"], ["y"])],  # not an NCHW producer's output
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, 6, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4, 6, 5])],
        [numpy_helper.from_array(v, name) for name, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_graph.OPSET)])
    x = rng.normal(size=(2, 3, 6, 5)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]

    onnx_graph.scales_as_depthwise_convs(model)

    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == [
        "Conv", "Conv", "MaxPool", "Conv", "Mul", "Sum", "Relu", "Mul"]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node, scale in [(model.graph.node[1], 0.5), (model.graph.node[3], 1 / 3)]:
        assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} == {
            "group": 4, "kernel_shape": [1, 1]}
        np.testing.assert_array_equal(weights[node.input[1]],
                                      np.full((4, 1, 1, 1), scale, np.float32))
    assert "third" not in weights and "half" in weights
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, before)


def test_input_normalisation_runs_on_whole_rows():
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(3)
    constants = {"mean": np.array([120.0, 110.0, 100.0], np.float32),
                 "std": np.array([60.0, 55.0, 58.0], np.float32),
                 "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32)}
    graph = helper.make_graph(
        [helper.make_node("Sub", ["image", "mean"], ["centred"]),
         helper.make_node("Div", ["centred", "std"], ["normalised"]),
         helper.make_node("Transpose", ["normalised"], ["nchw"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["nchw", "w"], ["y"], pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 6, 5, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4, 6, 5])],
        [numpy_helper.from_array(v, name) for name, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_graph.OPSET)])
    image = rng.uniform(0, 255, size=(2, 6, 5, 3)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"image": image})[0]

    onnx_graph.normalize_in_rows(model)

    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == [
        "Reshape", "Sub", "Div", "Reshape", "Transpose", "Conv"]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(weights["std/rows"], np.tile(constants["std"], 5))
    assert "std" not in weights and "mean" not in weights
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"image": image})[0]
    np.testing.assert_array_equal(after, before)


def test_onnx_runtime_graph_normalises_whole_rows(exported):
    """The ONNX Runtime graph's input goes into a reshape to rows, whose normalisation comes
    before the transpose to NCHW; the TensorRT graph keeps tf2onnx's order."""
    def input_consumers(path):
        model = onnx.load(str(path))
        return [n.op_type for n in model.graph.node if onnx_graph.INPUT_NAME in n.input]

    assert input_consumers(exported["result"].onnx_path) == ["Reshape"]
    assert input_consumers(exported["result"].trt_onnx_path) == ["Sub"]


def test_top_pairs_select_what_postprocess_selects():
    """The k best (anchor, class) logits of anchors with boxes, among anchors that often have
    several high classes, with k below and above the number of anchors."""
    rng = np.random.default_rng(4)
    batch, anchors, classes = 2, 300, 6
    logits = rng.normal(size=(batch, anchors, classes)).astype(np.float32)
    logits[:, ::3] += 2.0  # every third anchor's classes all rank high
    # Box i is [i, i, i + 1, i + 1], every seventh one empty: a candidate names its anchor.
    ids = np.arange(anchors, dtype=np.float32)
    boxes = np.stack([ids, ids, ids + 1, ids + 1], axis=1)
    boxes[::7, 2] = boxes[::7, 0]
    boxes = np.broadcast_to(boxes, (batch, anchors, 4)).copy()
    empty = boxes[..., 2] <= boxes[..., 0]
    for k in (200, 1000):
        got_boxes, got_scores = (t.numpy() for t in onnx_graph.top_pairs(
            tf.constant(logits), tf.constant(boxes), k))
        for b in range(batch):
            masked = np.where(empty[b, :, None], EMPTY_LOGIT, logits[b]).ravel()
            sigmoid = tf.sigmoid(masked).numpy()
            expected = {(int(i) // classes, int(i) % classes, sigmoid[i])
                        for i in np.argsort(-masked)[:k] if masked[i] > EMPTY_LOGIT}
            candidate, cls = np.nonzero(got_scores[b])
            got = {(int(got_boxes[b, c, 0]), int(j), got_scores[b, c, j])
                   for c, j in zip(candidate, cls)}
            assert len(got) == len(candidate) and got == expected, k


def test_conversion_does_not_follow_memory_addresses(monkeypatch):
    """tf2onnx iterates sets of its graph nodes, hashed by memory address, which differs from
    process to process: with random node hashes standing in for addresses, the export must
    still give the same bytes."""
    import tf2onnx

    architecture = tiny_architecture()
    head = onnx_graph.head_function(architecture.build(), architecture)
    outputs = (onnx_graph.BOX_CODES, onnx_graph.CLASS_LOGITS)
    onnx_graph.to_onnx(head, outputs)  # traces `head`: later conversions reuse that trace

    def export(seed: int) -> str:
        rng = random.Random(seed)
        hashes: dict[int, int] = {}
        monkeypatch.setattr(tf2onnx.graph.Node, "__hash__",
                            lambda node: hashes.setdefault(id(node), rng.getrandbits(60)))
        return hashlib.sha256(onnx_graph.to_onnx(head, outputs).SerializeToString()).hexdigest()

    digests = {export(seed) for seed in range(4)}
    assert len(digests) == 1, digests


def test_identity_reshapes_are_bypassed_and_the_others_kept():
    """tf2onnx leaves or removes [B, C, 1, 1] -> [-1, C, 1, 1] Reshapes depending on memory
    addresses; the exporter removes every such identity itself, and only those."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    targets = {"same": [-1, 4, 1, 1], "copy": [0, 0, 1, 1], "flat": [-1, 4]}
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "same"], ["a"]),
         helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Reshape", ["b", "copy"], ["c"]),
         helper.make_node("Reshape", ["c", "flat"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4, 1, 1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in targets.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_graph.OPSET)])
    x = np.random.default_rng(0).normal(size=(3, 4, 1, 1)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]

    onnx_graph.drop_identity_reshapes(model)

    onnx.checker.check_model(model)
    assert [(n.op_type, list(n.input)) for n in model.graph.node] == [
        ("Relu", ["x"]), ("Reshape", ["b", "flat"])]
    assert [t.name for t in model.graph.initializer] == ["flat"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, before)
