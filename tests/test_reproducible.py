"""Full-size training is bit-reproducible (issue 14): the real EfficientDet-D0 trained with the
demo spec's settings (iterations_per_loop 4, EMA, flip + scale/crop augmentation) at 128x128
gives byte-identical .tlt files twice, and across a kill -9 and resume.

Each run is a separate process with TensorFlow's default thread pools, as `effdet train` has;
a few steps on 40 generated images keep it as short as a full-width D0 allows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from effdet.spec import load_spec
from tests.test_train import KEY, REPO, data, kill_9_after_first_checkpoint_then_resume  # noqa: F401

DEMO_SPEC = REPO / "config" / "specs" / "demo.txt"
TIMEOUT = 1800  # a guard against hangs: full D0 traces for minutes on a busy 2-core machine
CHECKPOINTS = ("model.epoch-1.tlt", "model.epoch-2.tlt", "model.tlt")


@pytest.fixture(scope="module")
def demo_spec(data, tmp_path_factory) -> Path:  # noqa: F811
    """The demo spec as shipped, shortened to 2 epochs of 2 loops of 4 steps on the test data
    with the smallest evaluation (it does not change the weights; the later blocks override
    the demo's values: the spec loader merges)."""
    path = tmp_path_factory.mktemp("repro") / "demo.txt"
    path.write_text(DEMO_SPEC.read_text() + textwrap.dedent(f"""\
        training_config {{
          train_batch_size: 2
          num_examples_per_epoch: 16
          num_epochs: 2
          checkpoint_period: 1
          keep_checkpoint_max: 2
        }}
        dataset_config {{
          training_file_pattern: "{data}/train/train-*"
          validation_file_pattern: "{data}/val/val-*"
          validation_json_file: "{data}/raw/annotations/val.json"
        }}
        eval_config {{
          eval_epoch_cycle: 2 eval_batch_size: 2 eval_samples: 2 eval_after_training: false
        }}
        """))
    config = load_spec(path)
    training, augmentation = config.training_config, config.augmentation_config
    assert config.model_config.model_name == "efficientdet-d0"
    assert training.iterations_per_loop == 4 and training.moving_average_decay > 0
    assert augmentation.rand_hflip and augmentation.random_crop_min_scale < 1
    return path


def launcher(directory: Path, spec: Path, model_dir: Path) -> Path:
    script = directory / f"launch-{model_dir.name}.py"
    script.write_text(textwrap.dedent(f"""\
        from effdet.log import setup_logging
        from effdet.tasks.train import train
        if __name__ == "__main__":
            setup_logging()
            train({str(spec)!r}, {str(model_dir)!r}, {KEY!r})
        """))
    return script


@pytest.fixture(scope="module")
def two_runs(demo_spec) -> tuple[Path, Path]:
    """The same training twice, side by side (each also competes with the other for cores)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dirs = (demo_spec.parent / "first", demo_spec.parent / "second")
    scripts = [launcher(demo_spec.parent, demo_spec, d) for d in dirs]
    processes = []
    for script in scripts:
        with script.with_suffix(".log").open("wb") as log:
            processes.append(subprocess.Popen([sys.executable, str(script)], env=env,
                                              stdout=subprocess.DEVNULL, stderr=log))
    try:
        for process, script in zip(processes, scripts):
            process.wait(timeout=TIMEOUT)
            assert process.returncode == 0, script.with_suffix(".log").read_text()[-2000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return dirs


def test_full_d0_demo_training_twice_gives_byte_identical_models(two_runs):
    first, second = two_runs
    for name in CHECKPOINTS:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_full_d0_demo_training_killed_and_resumed_gives_the_same_bytes(two_runs, demo_spec):
    model_dir = demo_spec.parent / "killed"
    kill_9_after_first_checkpoint_then_resume(launcher(demo_spec.parent, demo_spec, model_dir),
                                              model_dir, timeout=TIMEOUT)
    for name in ("model.epoch-2.tlt", "model.tlt"):
        assert (model_dir / name).read_bytes() == (two_runs[0] / name).read_bytes(), name
