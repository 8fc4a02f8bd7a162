"""gen_trt_engine: ONNX Runtime engines on CPU, TensorRT's refusal without TensorRT/GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from PIL import Image

from effdet.data.convert import dataset_convert
from effdet.data.preprocess import MEAN_RGB
from effdet.data.synthetic import make_dataset
from effdet.errors import EffdetError
from effdet.export import onnx_graph
from effdet.export.quantize import postprocess_nodes, preprocess_nodes, quantize_int8
from effdet.model.saving import save_model
from effdet.runtimes.ort_options import ERRORS_ONLY, session_options
from effdet.tasks import engine
from effdet.tasks.engine import EngineUnavailable, calibration_batches, gen_trt_engine
from effdet.tasks.evaluate import evaluate
from effdet.tasks.export import export
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
KEY = "engine-test-Key-5"
NO_TENSORRT = ("TensorRT cannot be installed on this machine: its wheels fetch the libraries "
               "from NVIDIA's index")


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    from test_export import tiny_architecture, write_spec

    root = tmp_path_factory.mktemp("engine")
    architecture = tiny_architecture()
    model_path = root / "m.tlt"
    save_model(model_path, KEY, architecture, architecture.build(), manifest={})
    result = export(model_path, write_spec(root), root / "m.etlt", KEY)
    return {"root": root, "result": result}


def run(path: Path, images: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {onnx_graph.INPUT_NAME: images})


def test_onnx_runtime_engine_from_etlt_gives_the_same_detections(exported, tmp_path):
    images = np.random.default_rng(1).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    target = gen_trt_engine(exported["result"].etlt_path, KEY, tmp_path / "m.engine.onnx")
    assert target.exists()
    for got, expected in zip(run(target, images), run(exported["result"].onnx_path, images)):
        np.testing.assert_allclose(got, expected, atol=1e-4)


def nvinfer_config(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.mark.parametrize("source", ["onnx_path", "etlt_path"])
def test_deepstream_files_beside_an_onnx_runtime_engine(exported, tmp_path, source):
    engine_file = gen_trt_engine(getattr(exported["result"], source), KEY,
                                 tmp_path / "engine" / "model.onnx")
    folder = engine_file.parent
    assert (folder / "labels.txt").read_text().splitlines() == [
        "circle", "square", "triangle", "diamond"]
    config = nvinfer_config(folder / "nvinfer_config.txt")
    # Relative to the config's folder, as DeepStream resolves them: export's TensorRT graph
    # (DeepStream cannot load ONNX Runtime's model, so it is not named).
    assert not Path(config["onnx-file"]).is_absolute()
    assert (folder / config["onnx-file"]).resolve() == exported["result"].trt_onnx_path.resolve()
    assert (folder / config["labelfile-path"]).resolve() == (folder / "labels.txt").resolve()
    assert "model-engine-file" not in config and config["network-mode"] == "0"
    assert config["num-detected-classes"] == "4" and config["infer-dims"] == "3;128;128"


def test_onnx_runtime_engine_options_use_every_core():
    options = session_options()
    assert options.intra_op_num_threads == (os.cpu_count() or 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.log_severity_level == ERRORS_ONLY


def test_tensorrt_graph_is_refused_by_onnx_runtime(exported, tmp_path):
    with pytest.raises(EffdetError, match="TensorRT engine"):
        gen_trt_engine(exported["result"].trt_onnx_path, None, tmp_path / "x.onnx")


def test_without_tensorrt_the_error_says_so_with_exit_2(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on this machine: import fails
    with pytest.raises(EngineUnavailable, match="TensorRT is not installed") as error:
        gen_trt_engine(exported["result"].trt_onnx_path, None, tmp_path / "m.engine")
    assert error.value.exit_code == 2 and "\n" not in str(error.value)
    assert not (tmp_path / "m.engine").exists()


def test_etlt_needs_the_right_key(exported, tmp_path):
    with pytest.raises(EffdetError, match="wrong key") as error:
        gen_trt_engine(exported["result"].etlt_path, "not-the-key", tmp_path / "m.onnx")
    assert "\n" not in str(error.value)
    with pytest.raises(EffdetError, match="expected an .onnx or .etlt"):
        gen_trt_engine(tmp_path / "m.tlt", KEY, tmp_path / "m.onnx")
    with pytest.raises(EffdetError, match="would overwrite the model"):
        gen_trt_engine(exported["result"].onnx_path, None, exported["result"].onnx_path)


def test_deepstream_files_for_an_engine_come_from_the_model_metadata(exported, tmp_path):
    onnx_bytes = exported["result"].trt_onnx_path.read_bytes()
    labels, config = engine.write_engine_deepstream_files(
        onnx_bytes, tmp_path / "m.engine", data_type="int8", batch_size=4,
        cal_cache_file=tmp_path / "cal.bin", onnx_file=exported["result"].trt_onnx_path)
    assert labels.read_text().splitlines()[:2] == ["circle", "square"]
    text = config.read_text()
    for line in ["model-engine-file=m.engine", "network-mode=1", "int8-calib-file=cal.bin",
                 "batch-size=4", "pre-cluster-threshold=0.3", "infer-dims=3;128;128"]:
        assert line in text.splitlines()
    onnx_file = nvinfer_config(config)["onnx-file"]
    assert onnx_file.startswith("../")
    assert (tmp_path / onnx_file).resolve() == exported["result"].trt_onnx_path.resolve()


@pytest.fixture(scope="module")
def shapes(exported, tmp_path_factory) -> dict:
    """The exported tiny model, shapes images with a validation split and a spec reading it,
    and an int8 model calibrated on the images (its cache beside it)."""
    root = tmp_path_factory.mktemp("int8")
    data = make_dataset(root / "raw", num_images=8, width=160, height=120, seed=5,
                        val_fraction=0.25)
    dataset_convert(data.image_dir, data.val_json, root / "val", tag="val", num_shards=1,
                    workers=1)
    spec = root / "spec.txt"
    spec.write_text(complete(f"""
dataset_config {{ num_classes: 5 image_size: "128,128"
  validation_file_pattern: "{root / 'val'}/val-*" validation_json_file: "{data.val_json}" }}
eval_config {{ eval_batch_size: 2 eval_samples: 2 max_detections_per_image: 20 }}
"""))
    onnx_path = exported["result"].onnx_path
    cache = root / "cal.json"
    int8 = gen_trt_engine(onnx_path, None, root / "m.int8.onnx", data_type="int8",
                          cal_image_dir=data.image_dir, cal_cache_file=cache, batch_size=2,
                          batches=2)
    return {"images": data.image_dir, "spec": spec, "onnx": onnx_path, "int8": int8,
            "cache": cache}


def test_int8_onnx_runtime_model_quantises_the_network_only(shapes, tmp_path):
    engine_model = onnx.load(shapes["int8"])
    ops = {node.op_type for node in engine_model.graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops  # every convolution runs in int8
    assert (onnx_graph.read_metadata(engine_model)
            == onnx_graph.read_metadata(onnx.load(shapes["onnx"])))
    images = next(calibration_batches(shapes["images"], (128, 128), 3, 1))
    fp32, int8 = run(shapes["onnx"], images), run(shapes["int8"], images)
    assert int8[0].min() > 0 and not np.array_equal(int8[2], fp32[2])
    # DeepStream beside it builds fp32: ONNX Runtime's ranges are no TensorRT calibration.
    config = nvinfer_config(shapes["int8"].parent / "nvinfer_config.txt")
    assert config["network-mode"] == "0" and "int8-calib-file" not in config
    np.testing.assert_allclose(int8[2][:, :3], fp32[2][:, :3], atol=0.05)  # close, not equal
    # Decoding, top-k and NMS stay float: none of them reads a dequantised tensor.
    quantize_int8(shapes["onnx"].read_bytes(), tmp_path / "qdq.onnx", batches=None,
                  cache_file=shapes["cache"])
    qdq = onnx.load(tmp_path / "qdq.onnx")
    dequantised = {o for node in qdq.graph.node if node.op_type == "DequantizeLinear"
                   for o in node.output}
    post = [node for node in qdq.graph.node
            if node.op_type in ("TopK", "NonMaxSuppression", "Exp", "GatherND", "Sigmoid")
            and node.name in postprocess_nodes(qdq)]
    assert post and not any(set(node.input) & dequantised for node in post)
    # So does the input's normalisation: the first convolution's input is quantised once.
    pre = [node for node in qdq.graph.node if node.name in preprocess_nodes(qdq)]
    assert {"Sub", "Mul", "Transpose"} <= {node.op_type for node in pre}
    assert [node.op_type for node in pre].count("QuantizeLinear") == 1
    assert not any(set(node.input) & dequantised for node in pre)


def test_int8_cache_is_reused_without_images_and_evaluate_runs(shapes, tmp_path):
    written = shapes["cache"].read_bytes()
    assert json.loads(written)["calibration_method"]["value"] == "CalibrationMethod.Entropy"
    again = gen_trt_engine(shapes["onnx"], None, tmp_path / "b.onnx", data_type="int8",
                           cal_cache_file=shapes["cache"])
    assert shapes["cache"].read_bytes() == written
    # The caches of ONNX Runtime's min/max calibration, which earlier builds wrote, still load.
    minmax = tmp_path / "minmax.json"
    minmax.write_text(written.decode().replace("CalibrationMethod.Entropy",
                                               "CalibrationMethod.MinMax"))
    older = gen_trt_engine(shapes["onnx"], None, tmp_path / "c.onnx", data_type="int8",
                           cal_cache_file=minmax)
    images = np.random.default_rng(6).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    for model in (again, older):
        for got, expected in zip(run(model, images), run(shapes["int8"], images)):
            np.testing.assert_array_equal(got, expected)
    metrics = evaluate(shapes["spec"], again, None, output_dir=tmp_path / "eval")
    assert metrics["num_images"] == 2 and np.isfinite(metrics["AP"])
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_int8_onnx_runtime_errors_are_one_line(shapes, exported, tmp_path):
    with pytest.raises(EffdetError, match="int8 needs --cal_cache_file"):
        gen_trt_engine(shapes["onnx"], None, tmp_path / "m.onnx", data_type="int8",
                       cal_image_dir=shapes["images"])
    with pytest.raises(EffdetError, match="no calibration cache yet; pass --cal_image_dir"):
        gen_trt_engine(shapes["onnx"], None, tmp_path / "m.onnx", data_type="int8",
                       cal_cache_file=tmp_path / "missing.json")
    (tmp_path / "trt.bin").write_bytes(b"TRT-8601-EntropyCalibration2\n")
    with pytest.raises(EffdetError, match="not an ONNX Runtime calibration cache"):
        gen_trt_engine(shapes["onnx"], None, tmp_path / "m.onnx", data_type="int8",
                       cal_cache_file=tmp_path / "trt.bin")
    with pytest.raises(EffdetError, match="needs a TensorRT engine"):
        gen_trt_engine(exported["result"].trt_onnx_path, None, tmp_path / "m.onnx",
                       data_type="int8", cal_cache_file=shapes["cache"])
    assert not (tmp_path / "m.onnx").exists()


def test_postprocess_nodes_are_everything_after_the_prediction_convolutions(shapes):
    model = onnx.load(shapes["onnx"])
    excluded = postprocess_nodes(model)
    kinds = {node.op_type for node in model.graph.node if node.name in excluded}
    assert {"TopK", "NonMaxSuppression", "Exp", "GatherND"} <= kinds and "Conv" not in kinds
    network = [node for node in model.graph.node if node.name not in excluded]
    assert {"Conv", "Sigmoid", "Mul"} <= {node.op_type for node in network}
    assert not {"TopK", "NonMaxSuppression", "Exp"} & {node.op_type for node in network}


def test_calibration_batches_prepare_images_as_the_graph_expects(tmp_path, caplog):
    rng = np.random.default_rng(2)
    for i, (h, w) in enumerate([(64, 32), (50, 100), (128, 128)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    batches = list(calibration_batches(tmp_path, (128, 128), batch_size=2, batches=5))
    assert len(batches) == 1 and "only 1 of 5" in caplog.text
    assert batches[0].shape == (2, 128, 128, 3) and batches[0].dtype == np.float32
    np.testing.assert_allclose(batches[0][0, :, 64:], np.broadcast_to(MEAN_RGB, (128, 64, 3)),
                               atol=1e-3)
    expected = onnx_graph.network_input(
        tf.constant(np.asarray(Image.open(tmp_path / "1.png"))), (128, 128))[0]
    np.testing.assert_allclose(batches[0][1], expected.numpy())
    with pytest.raises(EffdetError, match="at least 4 calibration images"):
        next(calibration_batches(tmp_path, (128, 128), batch_size=4, batches=1))


def test_cli_gen_trt_engine_without_tensorrt_is_one_line_exit_2(exported, tmp_path):
    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    env = {k: v for k, v in os.environ.items() if k not in ("EFFDET_KEY", "EFFDET_DEBUG")}
    result = subprocess.run(
        [sys.executable, "-m", "effdet", "gen_trt_engine", "-m",
         str(exported["result"].etlt_path), "-k", KEY, "--engine_file",
         str(tmp_path / "m.engine"), "--data_type", "fp16"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("effdet: error: TensorRT is not installed")
    assert "Traceback" not in result.stderr and KEY not in result.stderr


@pytest.mark.parametrize("data_type", ["fp32", "fp16", "int8"])
def test_tensorrt_engine_builds_with_deepstream_files(exported, tmp_path, data_type):
    if not tensorrt_available():
        pytest.skip(NO_TENSORRT)
    images = tmp_path / "cal"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(images / f"{i}.png")
    cache = tmp_path / "cal.bin"
    engine_file = gen_trt_engine(exported["result"].trt_onnx_path, None, tmp_path / "m.engine",
                                 data_type=data_type, cal_image_dir=images, cal_cache_file=cache,
                                 batch_size=2, batches=2, max_batch_size=2)
    assert engine_file.stat().st_size > 0
    assert (tmp_path / "labels.txt").exists() and (tmp_path / "nvinfer_config.txt").exists()
    assert cache.exists() == (data_type == "int8")
