"""TAO's command lines: every flag of TAO's scripts and launcher parses with TAO's meaning,
and every task writes TAO's status.json (STARTED, then SUCCESS or FAILURE) where TAO does.

Flags come from nvidia_tao_tf1/cv/efficientdet/scripts/*.py, the launcher's
nvidia_tao_tf1/cv/common/entrypoint/entrypoint.py, and tao_deploy's
nvidia_tao_deploy/cv/efficientdet_tf1/scripts/gen_trt_engine.py.
"""

from __future__ import annotations

import types
from pathlib import Path

import onnx
import pytest

from effdet.cli import build_parser, main
from effdet.data.synthetic import make_dataset
from effdet.tasks import engine
from tests.spec_support import complete
from tao_status import COCO_NAMES, status_lines
from test_runtimes import KEY, save_tiny_tlt

LAUNCHER = ["--gpus", "1", "--gpu_index", "0", "-np", "1", "--log_file", "run.log", "-v"]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_dataset_convert_takes_taos_flags():
    args = parse("dataset_convert", "-i", "img", "-a", "a.json", "-o", "out", "-r", "res",
                 "-t", "train", "-s", "4", "--include_masks", *LAUNCHER)
    assert (args.results_dir, args.include_mask, args.num_shards, args.tag) == (
        "res", True, 4, "train")
    assert parse("dataset_convert", "-i", "i", "-a", "a", "-o", "o", "--include_mask").include_mask


def test_train_takes_taos_launcher_flags():
    args = parse("train", "-e", "s.txt", "-d", "m", "-k", "k", "--gpus", "2", "--gpu_index",
                 "0", "1", "-np", "2", "--use_amp", "--log_file", "l.log", "-v")
    assert (args.gpus, args.gpu_index, args.num_processes, args.use_amp, args.verbose) == (
        2, [0, 1], 2, True, True)


def test_evaluate_takes_taos_flags():
    args = parse("evaluate", "-e", "s.txt", "-m", "m.tlt", "-k", "k", "-r", "res", *LAUNCHER)
    assert (args.results_dir, args.gpu_index, args.verbose) == ("res", [0], True)


def test_prune_takes_taos_flags():
    args = parse("prune", "-m", "m.tlt", "-o", "out", "-k", "k", "-n", "L2", "-eq", "union",
                 "-pg", "8", "-pth", "0.1", "-nf", "16", "-el", "a", "b", "-v", *LAUNCHER[:-1])
    assert (args.normalizer, args.excluded_layers, args.verbose) == ("L2", ["a", "b"], True)


def test_inference_takes_taos_flags_and_keeps_ours():
    args = parse("inference", "-e", "s.txt", "-m", "m.tlt", "--image_dir", "img", "-k", "k",
                 "--class_map", "map.txt", "-r", "res", "-t", "0.4", *LAUNCHER)
    assert (args.in_image_path, args.label_map, args.results_dir, args.threshold,
            args.out_image_path) == ("img", "map.txt", "res", 0.4, None)
    ours = parse("inference", "-e", "s", "-m", "m", "-i", "img", "-o", "out", "-l", "lab",
                 "--label_map", "map.txt")
    assert (ours.out_image_path, ours.out_label_path, ours.label_map) == ("out", "lab", "map.txt")


def test_export_takes_taos_flags():
    args = parse("export", "-e", "s.txt", "-m", "m.tlt", "-o", "m.etlt", "-k", "k",
                 "--data_type", "int8", "--cal_image_dir", "cal", "--cal_cache_file", "c.bin",
                 "--engine_file", "m.engine", "--max_batch_size", "4", "--batch_size", "8",
                 "--batches", "3", "--max_workspace_size", "2", *LAUNCHER)
    assert (args.max_workspace_size, args.max_batch_size, args.verbose) == (2, 4, True)


def test_gen_trt_engine_takes_tao_deploys_flags():
    args = parse("gen_trt_engine", "-m", "m.onnx", "-k", "k", "--engine_file", "m.engine",
                 "-r", "res", "--data_type", "fp16", "--min_batch_size", "1",
                 "--opt_batch_size", "2", "--max_batch_size", "4", "--batch_size", "2",
                 "--batches", "3", "--max_workspace_size", "3", "-s", *LAUNCHER)
    assert (args.results_dir, args.min_batch_size, args.opt_batch_size, args.max_batch_size,
            args.max_workspace_size, args.strict_type_constraints, args.verbose) == (
        "res", 1, 2, 4, 3, True, True)
    defaults = parse("gen_trt_engine", "-m", "m.onnx", "--engine_file", "m.engine")
    assert defaults.max_workspace_size == 2  # TAO's default, in GB


@pytest.mark.parametrize(("argv", "message"), [
    (["evaluate", "-e", "s", "-m", "m.tlt", "--gpus", "2"], "only train uses several"),
    (["prune", "-m", "m.tlt", "-o", "o", "--use_amp"], "AMP is supported only for train"),
    (["train", "-e", "s", "-d", "d", "--gpus", "2", "--gpu_index", "1"], "one index per GPU"),
    (["train", "-e", "s", "-d", "d", "--gpus", "2", "-np", "3"], "-np 3"),
    (["inference", "-e", "s", "-m", "m.tlt", "-i", "img"], "-o/--out_image_path or -r"),
])
def test_taos_launcher_checks_are_one_line_errors(argv, message, capsys):
    assert main(argv) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("effdet: error:") and message in error[0]


class FakeTensorRT:
    """Records what build_trt_engine asks of TensorRT (not installable here)."""

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    BuilderFlag = types.SimpleNamespace(FP16="fp16", INT8="int8",
                                        PREFER_PRECISION_CONSTRAINTS="prefer_precision")

    def __init__(self):
        self.limits, self.flags, self.shapes = {}, set(), []
        fake = self

        class Network:
            def get_input(self, index):
                return types.SimpleNamespace(name="input", shape=(-1, 128, 128, 3))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.limits[pool] = size

            def set_flag(self, flag):
                fake.flags.add(flag)

            def add_optimization_profile(self, profile):
                pass

        class Profile:
            def set_shape(self, name, *shapes):
                fake.shapes.append((name, shapes))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"serialized engine"

        self.Builder = Builder
        self.OnnxParser = lambda network, logger: types.SimpleNamespace(parse=lambda data: True)

    def init_libnvinfer_plugins(self, logger, namespace):
        pass


def identity_onnx(path: Path) -> Path:
    node = onnx.helper.make_node("Identity", ["input"], ["output"])
    value = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 128, 128, 3])
    out = onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 128, 128, 3])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [value], [out])), path)
    return path


def test_gen_trt_engine_workspace_is_in_gb_and_the_profile_is_min_opt_max(tmp_path,
                                                                            monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setattr(engine, "_import_tensorrt", lambda: fake)
    model = identity_onnx(tmp_path / "m.onnx")
    assert main(["gen_trt_engine", "-m", str(model), "--engine_file", str(tmp_path / "m.engine"),
                 "--max_workspace_size", "2", "--min_batch_size", "1", "--opt_batch_size", "2",
                 "--max_batch_size", "4", "-s", "-r", str(tmp_path / "res")]) == 0
    assert fake.limits == {"workspace": 2 * 2**30}
    assert fake.shapes == [("input", ((1, 128, 128, 3), (2, 128, 128, 3), (4, 128, 128, 3)))]
    assert "prefer_precision" in fake.flags
    assert (tmp_path / "m.engine").read_bytes() == b"serialized engine"
    lines = status_lines(tmp_path / "res" / "status.json")
    assert [(r["status"], r["message"]) for r in lines] == [
        ("STARTED", "Starting efficientdet_tf1 gen_trt_engine."),
        ("SUCCESS", "Gen_trt_engine finished successfully.")]


def test_gen_trt_engine_refuses_an_unordered_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "_import_tensorrt", FakeTensorRT)
    model = identity_onnx(tmp_path / "m.onnx")
    assert main(["gen_trt_engine", "-m", str(model), "--engine_file", str(tmp_path / "m.engine"),
                 "--opt_batch_size", "8", "--max_batch_size", "4",
                 "-r", str(tmp_path / "res")]) == 1
    assert "min <= opt <= max" in capsys.readouterr().err
    assert [r["status"] for r in status_lines(tmp_path / "res" / "status.json")] == [
        "STARTED", "FAILURE"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tao-cli")
    data = make_dataset(root / "raw", num_images=4, width=128, height=128, seed=5,
                        val_fraction=0.5)
    spec = root / "spec.txt"
    spec.write_text(complete(f"""
dataset_config {{
  num_classes: 5
  image_size: "128,128"
  validation_file_pattern: "{root / 'records'}/val-*"
  validation_json_file: "{data.val_json}"
}}
eval_config {{ eval_batch_size: 2 eval_samples: 2 max_detections_per_image: 20 }}
"""))
    save_tiny_tlt(root / "m.tlt")
    return {"root": root, "spec": spec, "model": root / "m.tlt", "images": data.image_dir,
            "val_json": data.val_json}


def assert_task_status(path: Path, started: str, finished: str) -> list[dict]:
    lines = status_lines(path)
    assert (lines[0]["status"], lines[0]["message"]) == ("STARTED", started)
    assert (lines[-1]["status"], lines[-1]["message"]) == ("SUCCESS", finished)
    return lines


def test_every_task_writes_taos_status_json(workspace, tmp_path):
    root, spec, model = workspace["root"], str(workspace["spec"]), str(workspace["model"])
    assert main(["dataset_convert", "-i", str(workspace["images"]), "-a",
                 str(workspace["val_json"]), "-o", str(root / "records"), "-t", "val", "-s", "1",
                 "-r", str(tmp_path / "convert")]) == 0
    assert_task_status(tmp_path / "convert" / "status.json", "Starting tfrecords conversion.",
                       "Conversion finished successfully.")

    assert main(["evaluate", "-e", spec, "-m", model, "-k", KEY, "-r",
                 str(tmp_path / "eval")]) == 0
    lines = assert_task_status(tmp_path / "eval" / "status.json",
                               "Starting EfficientDet evaluation.",
                               "Evaluation finished successfully.")
    assert set(lines[-1]["kpi"]) == COCO_NAMES  # TAO's names; evaluate.py does not scale
    assert (tmp_path / "eval" / "metrics.json").exists()  # -r without -o: metrics there too

    assert main(["inference", "-e", spec, "-m", model, "-k", KEY, "--image_dir",
                 str(workspace["images"]), "-r", str(tmp_path / "infer"), "-t", "0.0"]) == 0
    assert_task_status(tmp_path / "infer" / "status.json", "Starting EfficientDet inference.",
                       "Inference finished successfully.")
    assert list((tmp_path / "infer" / "images_annotated").iterdir())  # TAO's layout under -r
    assert list((tmp_path / "infer" / "labels").glob("*.txt"))

    assert main(["prune", "-m", model, "-o", str(tmp_path / "pruned"), "-k", KEY,
                 "-pth", "0.5"]) == 0
    lines = assert_task_status(tmp_path / "pruned" / "status.json",
                               "Starting EfficientDet pruning.", "Pruning finished successfully.")
    assert set(lines[-1]["kpi"]) == {"pruning_ratio", "param_count", "size"}

    assert main(["export", "-e", spec, "-m", model, "-k", KEY, "-o",
                 str(tmp_path / "export" / "m.etlt")]) == 0
    assert_task_status(tmp_path / "export" / "status.json", "Starting EfficientDet export.",
                       "Export finished successfully.")


@pytest.mark.parametrize("task", ["evaluate", "inference", "prune", "export"])
def test_a_failing_task_ends_its_status_with_failure(task, workspace, tmp_path, capsys):
    missing, spec = str(tmp_path / "missing.tlt"), str(workspace["spec"])
    argv = {"evaluate": ["-e", spec, "-m", missing, "-r", str(tmp_path / "res")],
            "inference": ["-e", spec, "-m", missing, "-i", str(workspace["images"]),
                          "-r", str(tmp_path / "res")],
            "prune": ["-m", missing, "-o", str(tmp_path / "res")],
            "export": ["-e", spec, "-m", missing, "-o", str(tmp_path / "res" / "m.etlt")]}[task]
    assert main([task, *argv, "-k", KEY]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    lines = status_lines(tmp_path / "res" / "status.json")
    assert [r["status"] for r in lines] == ["STARTED", "FAILURE"]
    assert lines[-1]["message"] in error and "missing.tlt" in lines[-1]["message"]
    assert KEY not in (tmp_path / "res" / "status.json").read_text()
