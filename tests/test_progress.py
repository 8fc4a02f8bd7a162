"""Progress on the console, noise kept out of the logs.

With --log_file, the progress records (a long task's start and end, training's step lines) go
to stdout as well, which Snakemake shows on its console while the rule's log keeps everything;
ONNX Runtime's warnings (coloured, written straight to stderr) stay out of a task's log.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effdet import progress
from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset
from effdet.log import LOGGER_NAME, PROGRESS, register_secret, setup_logging
from effdet.model.variants import get_variant
from effdet.tasks.train import train
from tests.spec_support import complete
from tests.workflow_support import VENV_BIN, copy_workflow, snakemake

KEY = "progress-test-key"
TINY = get_variant("efficientdet-d0").replace(fpn_num_filters=16, fpn_cell_repeats=1,
                                              box_class_repeats=1, width_coefficient=0.25,
                                              depth_coefficient=0.25)
STEP_LINE = re.compile(r"^train (\S+): epoch (\d+)/(\d+), step (\d+)/(\d+)"
                       r"(?:, ([\d.]+) img/s)?(?:, ETA (\S+))?$")
ORT_WARNING = "[W:onnxruntime"


@pytest.fixture
def effdet_logger():
    """The effdet logger as the test found it, restored afterwards (handlers hold the
    captured stdout of this test only)."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handlers, level, propagate = saved
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def test_durations_read_like_an_eta():
    assert [progress.duration(s) for s in (0, 45.4, 372, 3600, 7500)] == [
        "0s", "45s", "6m12s", "1h00m", "2h05m"]


def test_pace_leaves_out_the_first_call_and_extrapolates_wall_time(monkeypatch):
    clock = iter([100.0, 130.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    pace = progress.Pace(total=100, items_per_step=8)
    pace.done(step=10, count=10, seconds=60.0)  # tracing: not the pace of what follows
    assert pace.items_per_second() is None and pace.seconds_left(10) is None
    pace.done(step=20, count=10, seconds=20.0)
    assert pace.items_per_second() == pytest.approx(10 * 8 / 20.0)
    # 30 s of wall time (an evaluation included) for steps 10..20: 3 s a step, 80 to go
    assert pace.seconds_left(20) == pytest.approx(240.0)


def test_with_a_log_file_only_progress_reaches_stdout_scrubbed(effdet_logger, tmp_path, capsys):
    log_file = tmp_path / "task.log"
    setup_logging(log_file)
    register_secret("progress-Secret-7")
    effdet_logger.info("detail line")
    effdet_logger.info("train: epoch 1/2 with progress-Secret-7", extra=PROGRESS)
    for handler in effdet_logger.handlers:
        handler.flush()
    captured = capsys.readouterr()
    assert captured.out == "train: epoch 1/2 with ********\n"
    assert captured.err == ""
    text = log_file.read_text()
    assert "detail line" in text and "train: epoch 1/2 with ********" in text
    assert "progress-Secret-7" not in text


def test_without_a_log_file_progress_is_logged_once_on_stderr(effdet_logger, capsys):
    setup_logging(None)
    effdet_logger.info("train: epoch 1/2", extra=PROGRESS)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("train: epoch 1/2") == 1


def test_training_prints_a_line_per_logged_step_with_speed_and_eta(effdet_logger, tmp_path,
                                                                   capsys):
    summary = make_dataset(tmp_path / "raw", 10, 128, 128, seed=5, val_fraction=0.2)
    dataset_convert(summary.image_dir, summary.train_json, tmp_path / "train", tag="train",
                    num_shards=1)
    spec = tmp_path / "spec.txt"
    spec.write_text(complete(textwrap.dedent(f"""\
        training_config {{
          train_batch_size: 2 num_examples_per_epoch: 6 num_epochs: 2 iterations_per_loop: 1
          logging_frequency: 2 checkpoint_period: 2 learning_rate: 0.01 lr_warmup_epoch: 1
        }}
        dataset_config {{
          num_classes: 5 image_size: "128,128" max_instances_per_image: 10
          training_file_pattern: "{tmp_path}/train/train-*"
        }}
        eval_config {{ eval_after_training: false eval_epoch_cycle: 2 }}
        """)))
    log_file = tmp_path / "train.log"
    setup_logging(log_file)
    train(spec, tmp_path / "model", KEY, variant=TINY)
    lines = capsys.readouterr().out.splitlines()
    matches = [STEP_LINE.match(line) for line in lines]
    assert all(matches), lines
    # 3 steps an epoch: logged steps 2, 4, 6 and the epoch ends 3, 6, one line each
    assert [int(m[4]) for m in matches] == [2, 3, 4, 6]
    assert {(m[1], m[3], m[5]) for m in matches} == {(str(tmp_path / "model"), "2", "6")}
    assert [int(m[2]) for m in matches] == [1, 1, 2, 2]
    # the first step (tracing) measures nothing; every later line has a speed and an ETA
    assert all(m[6] and m[7] for m in matches[1:]), lines
    assert matches[-1][7] == "0s"
    assert all(line in log_file.read_text() for line in lines)


def test_snakemake_shows_a_jobs_progress_and_its_log_keeps_it(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    config = root / "config/config.yaml"
    small = config.read_text().replace("num_images: 160", "num_images: 8")
    assert "num_images: 8," in small
    config.write_text(small)
    result = snakemake(root, "--cores", "2", "results/demo/tfrecords/train")
    log = "logs/demo/dataset_convert_train.log"
    assert f"dataset_convert: started (log: {log})" in result.stdout, result.stdout[-3000:]
    assert re.search(r"^dataset_convert: done in \d+s$", result.stdout, re.MULTILINE)
    # the rule's command line and the job's lines, nothing else of effdet's log
    assert "[INFO]" not in result.stdout
    text = (root / log).read_text()
    assert f"[INFO] dataset_convert: started (log: {log})" in text
    assert "dataset_convert: done in" in text


def conv_model(path: Path) -> Path:
    """A one-convolution model: enough for ONNX Runtime's CPU layout optimisations."""
    weights = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_onnx_runtime_warnings_stay_out_of_the_engine_log(tmp_path):
    model = conv_model(tmp_path / "conv.onnx")
    # ONNX Runtime's defaults warn about saving such an optimised model, in colour
    plain = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""\
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = {str(tmp_path / 'plain.onnx')!r}
        ort.InferenceSession({str(model)!r}, options, providers=["CPUExecutionProvider"])
        """)], capture_output=True, text=True, check=True)
    assert ORT_WARNING in plain.stderr and "\x1b[" in plain.stderr
    # the rule's way: --log_file, and stderr appended to the same file
    log = tmp_path / "gen_trt_engine.log"
    with log.open("a") as stderr:
        result = subprocess.run([str(VENV_BIN / "effdet"), "gen_trt_engine", "-m", str(model),
                                 "--engine_file", str(tmp_path / "engine.onnx"),
                                 "--log_file", str(log)], stderr=stderr, stdout=subprocess.PIPE,
                                text=True, check=False)
    text = log.read_text()
    assert result.returncode == 0, text
    assert (tmp_path / "engine.onnx").stat().st_size > 0
    assert ORT_WARNING not in text and "\x1b[" not in text, text
    assert "gen_trt_engine: started" in result.stdout


def test_slurm_account_guessing_is_quiet_only_under_no_account():
    from types import SimpleNamespace

    from effdet.slurm_account import AccountGuessFilter

    def kept(no_account: bool, message: str) -> bool:
        workflow = SimpleNamespace(executor_settings=SimpleNamespace(no_account=no_account))
        record = logging.LogRecord("snakemake.logging", logging.WARNING, __file__, 1, message,
                                   None, None)
        return AccountGuessFilter(workflow).filter(record)

    guessing = ["No SLURM account given, trying to guess.",
                "No account was given, not able to get a SLURM account via sacct: disabled",
                "Unable to guess SLURM account. Trying to proceed without."]
    assert not any(kept(True, m) for m in guessing)
    assert all(kept(False, m) for m in guessing)
    assert kept(True, "Guessed SLURM account: lab")  # it will be passed as -A: still shown
    local = SimpleNamespace(executor_settings=None)  # before the run starts, or not Slurm
    assert AccountGuessFilter(local).filter(logging.LogRecord(
        "snakemake.logging", logging.WARNING, __file__, 1, guessing[0], None, None))
