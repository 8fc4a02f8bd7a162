"""`effdet train`: outputs, resume after kill -9, and one test per training_config field.

Runs use a narrow EfficientDet-D0 at 128x128 on generated shapes, so each takes seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset
from effdet.errors import EffdetError
from effdet.formats.tlt import read_tlt
from effdet.losses import detection_loss
from effdet.model.saving import EMA, WEIGHTS, Architecture, load_model, members_to_arrays, save_model
from effdet.model.variants import get_variant
from effdet.spec import load_spec
from effdet.tasks.train import Trainer, train
from effdet.training.regularization import weight_decay
from tests.spec_support import complete

KEY = "train-test-key"
TINY = get_variant("efficientdet-d0").replace(fpn_num_filters=16, fpn_cell_repeats=1,
                                              box_class_repeats=1, width_coefficient=0.25,
                                              depth_coefficient=0.25)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    summary = make_dataset(root / "raw", 40, 128, 128, seed=3, val_fraction=0.2)
    dataset_convert(summary.image_dir, summary.train_json, root / "train", tag="train", num_shards=2)
    dataset_convert(summary.image_dir, summary.val_json, root / "val", tag="val", num_shards=1)
    return root


# Values these tests were written against that differ from TAO's defaults; a test's own
# `training`/`evaluation` text overrides them.
KEPT_TRAINING = {"l2_weight_decay": "0.00004", "clip_gradients_norm": "10"}
KEPT_EVALUATION = {"eval_after_training": "true"}


def kept(text: str, values: dict[str, str]) -> str:
    return " ".join([text] + [f"{k}: {v}" for k, v in values.items() if f"{k}:" not in text])


def write_spec(path: Path, data: Path, training: str = "", evaluation: str = "",
               num_classes: int = 5) -> Path:
    training, evaluation = kept(training, KEPT_TRAINING), kept(evaluation, KEPT_EVALUATION)
    path.write_text(complete(textwrap.dedent(f"""\
        training_config {{
          train_batch_size: 4
          num_examples_per_epoch: 8
          num_epochs: 3
          checkpoint_period: 1
          iterations_per_loop: 1
          lr_warmup_epoch: 1
          lr_warmup_init: 0.01
          learning_rate: 0.05
          moving_average_decay: 0.9
          logging_frequency: 1
          {training}
        }}
        dataset_config {{
          num_classes: {num_classes}
          image_size: "128,128"
          training_file_pattern: "{data}/train/train-*"
          validation_file_pattern: "{data}/val/val-*"
          validation_json_file: "{data}/raw/annotations/val.json"
          max_instances_per_image: 10
        }}
        eval_config {{
          eval_batch_size: 4
          eval_epoch_cycle: 1
          eval_samples: 4
          {evaluation}
        }}
        augmentation_config {{ rand_hflip: true random_crop_min_scale: 0.8 random_crop_max_scale: 1.2 }}
        """)))
    return path


def weights_of(path: Path, group: str = WEIGHTS) -> dict[str, np.ndarray]:
    return members_to_arrays(group, read_tlt(path, KEY).members)


def assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not np.array_equal(a[name], b[name])]
    assert not different, f"{len(different)} arrays differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    """One uninterrupted 3-epoch run that several tests inspect."""
    root = tmp_path_factory.mktemp("baseline")
    spec = write_spec(root / "spec.txt", data, training="keep_checkpoint_max: 2")
    result = train(spec, root / "model", KEY, variant=TINY)
    return spec, root / "model", result


def test_training_writes_checkpoints_final_model_status_metrics_and_summaries(baseline):
    _, model_dir, result = baseline
    assert result.step == 6 and result.epoch == 3  # 8 examples / batch 4 = 2 steps per epoch
    names = {p.name for p in model_dir.iterdir()}
    assert {"model.epoch-2.tlt", "model.epoch-3.tlt", "model.tlt", "status.json"} <= names
    assert "model.epoch-1.tlt" not in names  # keep_checkpoint_max: 2
    lines = (model_dir / "status.json").read_text().splitlines()
    assert '"SUCCESS"' in lines[-1]
    assert sorted(p.name for p in (model_dir / "eval").iterdir()) == [
        "metrics.epoch-1.json", "metrics.epoch-2.json", "metrics.epoch-3.json"]
    assert list((model_dir / "logs").iterdir()), "no TensorBoard summaries"
    live = json.loads((model_dir / "dvclive" / "metrics.json").read_text())
    assert live["step"] == 6 and "total_loss" in live["train"] and "AP50" in live["eval"]
    history = (model_dir / "dvclive" / "plots" / "metrics" / "train" / "total_loss.tsv")
    assert len(history.read_text().splitlines()) == 1 + 6  # header + logging_frequency 1
    manifest = read_tlt(model_dir / "model.tlt", KEY).manifest
    assert manifest["step"] == 6 and manifest["classes"]["1"] == "circle"
    assert KEY.encode() not in (model_dir / "model.tlt").read_bytes()


def test_ema_weights_differ_from_raw_and_are_what_loading_uses(baseline):
    _, model_dir, _ = baseline
    raw, ema = weights_of(model_dir / "model.tlt"), weights_of(model_dir / "model.tlt", EMA)
    assert any(not np.allclose(raw[k], ema[k]) for k in raw if k.endswith("kernel"))
    loaded = load_model(model_dir / "model.tlt", KEY)
    stem = next(v for v in loaded.model.weights if v.path == "stem_conv/kernel")
    np.testing.assert_array_equal(stem.numpy(), ema["stem_conv/kernel"])


def test_kill_9_then_rerun_resumes_and_ends_with_identical_weights(baseline, data, tmp_path):
    spec, baseline_dir, _ = baseline
    model_dir = tmp_path / "model"
    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_train import KEY, TINY
        from effdet.log import setup_logging
        from effdet.tasks.train import train
        if __name__ == "__main__":
            setup_logging()
            train({str(spec)!r}, {str(model_dir)!r}, KEY, variant=TINY)
        """))
    kill_9_after_first_checkpoint_then_resume(launcher, model_dir)
    for group in (WEIGHTS, EMA):
        assert_same_weights(weights_of(model_dir / "model.tlt", group),
                            weights_of(baseline_dir / "model.tlt", group))


def kill_9_after_first_checkpoint_then_resume(launcher: Path, model_dir: Path,
                                              timeout: float = 240) -> None:
    """Run `launcher` (a script that trains into `model_dir`), kill -9 it as soon as the
    epoch-1 checkpoint exists, then rerun it to the end; the rerun must resume."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = launcher.with_suffix(".log")  # a file, not a pipe: a full pipe would stall the run
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, str(launcher)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + timeout
        while not (model_dir / "model.epoch-1.tlt").exists():
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"no checkpoint within {timeout:.0f} s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (model_dir / "model.tlt").exists(), "finished before the kill; nothing to resume"
    resumed = subprocess.run([sys.executable, str(launcher)], env=env, capture_output=True,
                             text=True, timeout=timeout + 60)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr


def test_stop_at_epoch_stops_and_a_rerun_without_it_continues(baseline, data, tmp_path):
    _, baseline_dir, _ = baseline
    spec = write_spec(tmp_path / "spec.txt", data, training="stop_at_epoch: 1",
                      evaluation="eval_after_training: false")
    first = train(spec, tmp_path / "model", KEY, variant=TINY)
    assert (first.epoch, first.step) == (1, 2)
    write_spec(spec, data, evaluation="eval_after_training: false")
    second = train(spec, tmp_path / "model", KEY, variant=TINY)
    assert second.resumed_from == tmp_path / "model" / "model.epoch-1.tlt"
    assert_same_weights(weights_of(tmp_path / "model" / "model.tlt"),
                        weights_of(baseline_dir / "model.tlt"))


def test_resume_continues_the_stochastic_depth_random_sequence(data, tmp_path):
    # Only repeated MBConv blocks have the residual that drop-connect acts on: depth 0.5 gives
    # three stages two blocks each (full depth has more, and traced twice as long).
    dropping = TINY.replace(survival_prob=0.8, depth_coefficient=0.5)
    model = Architecture(load_spec(write_spec(tmp_path / "s.txt", data)).model_config, 5,
                         (128, 128), dropping).build()
    assert len(model.variables) > len(model.weights)  # seed-generator states exist
    quiet = "eval_after_training: false eval_epoch_cycle: 2"
    whole = write_spec(tmp_path / "whole.txt", data, training="num_epochs: 2", evaluation=quiet)
    train(whole, tmp_path / "whole", KEY, variant=dropping)
    part = write_spec(tmp_path / "part.txt", data, training="num_epochs: 2 stop_at_epoch: 1",
                      evaluation=quiet)
    train(part, tmp_path / "part", KEY, variant=dropping)
    train(whole, tmp_path / "part", KEY, variant=dropping)
    assert_same_weights(weights_of(tmp_path / "part" / "model.tlt"),
                        weights_of(tmp_path / "whole" / "model.tlt"))


def test_wrong_key_on_resume_is_a_one_line_error(baseline):
    spec, model_dir, _ = baseline
    with pytest.raises(EffdetError, match="wrong key") as info:
        train(spec, model_dir, "not-the-key", variant=TINY)
    assert "\n" not in str(info.value)


def test_resuming_with_a_changed_spec_is_refused(baseline, data, tmp_path):
    spec, model_dir, _ = baseline
    changed = write_spec(tmp_path / "changed.txt", data,
                         training="keep_checkpoint_max: 2 learning_rate: 0.07")
    with pytest.raises(EffdetError, match="different spec.*training_config.learning_rate"):
        train(changed, model_dir, KEY, variant=TINY)


def trainer_for(spec: Path, model_dir: Path, variant=TINY) -> Trainer:
    trainer = Trainer(load_spec(spec), model_dir, KEY, gpus=1, gpu_index=None, variant=variant)
    trainer.arch = trainer.architecture()
    trainer.build(trainer.arch)
    return trainer


def test_optimizer_and_schedule_follow_the_spec(data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", data, training=(
        "momentum: 0.8 clip_gradients_norm: 2.5 use_xla: true lr_warmup_epoch: 2 num_epochs: 4"))
    trainer = trainer_for(spec, tmp_path / "m")
    assert trainer.optimizer.momentum == pytest.approx(0.8)
    assert trainer.optimizer.global_clipnorm == pytest.approx(2.5)
    assert float(trainer.schedule(0)) == pytest.approx(0.01)  # lr_warmup_init
    assert float(trainer.schedule(2)) == pytest.approx(0.03)  # halfway through 4 warm-up steps
    assert float(trainer.schedule(4)) == pytest.approx(0.05)  # learning_rate, the peak
    assert float(trainer.schedule(8)) == pytest.approx(0.0, abs=1e-7)  # num_epochs * 2 steps
    zero = trainer_for(write_spec(tmp_path / "s2.txt", data, "clip_gradients_norm: 0"),
                            tmp_path / "m2")
    # TAO reads 0 as its default 5.0 (utils/spec_loader.py:154)
    assert zero.optimizer.global_clipnorm == pytest.approx(5.0)


def test_use_xla_compiles_the_train_step(data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", data, training="use_xla: true")
    trainer = trainer_for(spec, tmp_path / "m")
    result = trainer.make_loop()(iter(trainer.dataset(0)), tf.constant(2))
    assert np.isfinite(float(result["total_loss"]))
    assert int(trainer.optimizer.iterations) == 2
    compiled = trainer.make_loop().python_function.__closure__
    assert any(getattr(cell.cell_contents, "_jit_compile", None) is True for cell in compiled)


def first_batch(trainer: Trainer):
    return next(iter(trainer.dataset(0)))


def test_clip_gradients_norm_bounds_the_first_update(data, tmp_path):
    clip, rate = 1e-3, 0.5
    spec = write_spec(tmp_path / "spec.txt", data, training=(
        f"clip_gradients_norm: {clip} lr_warmup_init: {rate} learning_rate: {rate} "
        "l2_weight_decay: 0"))
    trainer = trainer_for(spec, tmp_path / "m")
    images, labels = first_batch(trainer)
    before = [v.numpy() for v in trainer.model.trainable_variables]
    with tf.GradientTape() as tape:
        class_out, box_out = trainer.model(images, training=True)
        loss = detection_loss(class_out, box_out, labels, [3, 4, 5, 6, 7], 4)["total_loss"]
    raw_norm = float(tf.linalg.global_norm(tape.gradient(loss, trainer.model.trainable_variables)))
    assert raw_norm > 10 * clip  # otherwise the check below would pass without clipping
    for variable, value in zip(trainer.model.trainable_variables, before):
        variable.assign(value)
    trainer.make_step_fn()(images, labels)
    step_norm = np.sqrt(sum(np.sum((v.numpy() - b) ** 2)
                            for v, b in zip(trainer.model.trainable_variables, before)))
    assert step_norm <= rate * clip * 1.001


@pytest.mark.parametrize("l2,l1", [(0.0, 0.0), (1e-3, 0.0), (0.0, 1e-4), (1e-3, 1e-4)])
def test_weight_decay_terms_enter_the_loss(data, tmp_path, l2, l1):
    spec = write_spec(tmp_path / "spec.txt", data,
                      training=f"l2_weight_decay: {l2} l1_weight_decay: {l1}")
    trainer = trainer_for(spec, tmp_path / "m")
    expected = float(weight_decay(trainer.kernels, l2, l1))
    result = trainer.make_step_fn()(*first_batch(trainer))
    assert float(result["reg_loss"]) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert float(result["total_loss"]) == pytest.approx(
        float(result["det_loss"]) + expected, rel=1e-5)
    assert (expected > 0) == bool(l2 or l1)


def test_moving_average_decay_zero_disables_the_average(data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", data, training="moving_average_decay: 0 num_epochs: 1",
                      evaluation="eval_after_training: false")
    train(spec, tmp_path / "m", KEY, variant=TINY)
    members = read_tlt(tmp_path / "m" / "model.tlt", KEY).members
    assert not any(name.startswith(f"{EMA}/") for name in members)


def test_seed_decides_the_result(data, tmp_path):
    results = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        spec = write_spec(tmp_path / f"{name}.txt", data, training=f"tf_random_seed: {seed} num_epochs: 1",
                          evaluation="eval_after_training: false")
        train(spec, tmp_path / name, KEY, variant=TINY)
        results[name] = weights_of(tmp_path / name / "model.tlt")
    assert_same_weights(results["a"], results["b"])
    assert any(not np.array_equal(results["a"][k], results["c"][k]) for k in results["a"])


def test_iterations_per_loop_logging_frequency_and_disable_logging(data, tmp_path, caplog,
                                                                    monkeypatch):
    calls = []
    original = Trainer.make_loop

    def counting_loop(self):
        loop = original(self)

        def run(iterator, count):
            calls.append(int(count))
            return loop(iterator, count)

        return run

    monkeypatch.setattr(Trainer, "make_loop", counting_loop)
    spec = write_spec(tmp_path / "spec.txt", data, evaluation="eval_after_training: false",
                      training="iterations_per_loop: 3 logging_frequency: 4 num_epochs: 4 "
                               "num_examples_per_epoch: 24 checkpoint_period: 2")
    with caplog.at_level(logging.INFO, logger="effdet"):
        train(spec, tmp_path / "m", KEY, variant=TINY)
    assert calls == [3, 3] * 4  # 6 steps per epoch, never crossing an epoch boundary
    assert sorted(p.name for p in (tmp_path / "m").glob("model.epoch-*.tlt")) == [
        "model.epoch-2.tlt", "model.epoch-4.tlt"]  # checkpoint_period: 2
    step_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in step_lines] == ["6", "9", "12", "18", "21", "24"]
    caplog.clear()
    quiet = write_spec(tmp_path / "quiet.txt", data, evaluation="eval_after_training: false",
                       training="disable_logging: true num_epochs: 1")
    with caplog.at_level(logging.INFO, logger="effdet"):
        train(quiet, tmp_path / "q", KEY, variant=TINY)
    assert not [r for r in caplog.records if r.getMessage().startswith("step ")]


def test_profile_skip_steps_keeps_warm_up_out_of_the_throughput(data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", data, evaluation="eval_after_training: false",
                      training="profile_skip_steps: 4 num_epochs: 3")
    train(spec, tmp_path / "m", KEY, variant=TINY)
    table = tmp_path / "m" / "dvclive" / "plots" / "metrics" / "train" / "images_per_second.tsv"
    rates = [float(row.split("\t")[1]) for row in table.read_text().splitlines()[1:]]
    assert rates[:4] == [0.0] * 4 and all(r > 0 for r in rates[4:])


def test_checkpoint_with_skip_checkpoint_variables_transfers_all_but_the_head(baseline, data,
                                                                              tmp_path):
    _, model_dir, _ = baseline
    source = weights_of(model_dir / "model.tlt", EMA)
    spec = write_spec(tmp_path / "spec.txt", data, num_classes=3,
                      training=f'checkpoint: "{model_dir / "model.tlt"}"')
    with pytest.raises(EffdetError, match="class_net_predict"):
        trainer_for(spec, tmp_path / "m").restore()
    write_spec(spec, data, num_classes=3, training=(
        f'checkpoint: "{model_dir / "model.tlt"}" skip_checkpoint_variables: "class_net_predict"'))
    trainer = trainer_for(spec, tmp_path / "m2")
    trainer.restore()
    current = {v.path: v.numpy() for v in trainer.model.weights}
    np.testing.assert_array_equal(current["stem_conv/kernel"], source["stem_conv/kernel"])
    assert current["class_net_predict/bias"].shape != source["class_net_predict/bias"].shape


def test_pruned_model_path_builds_the_recorded_widths(data, tmp_path):
    widths = {"class_net_conv0": 8, "box_net_conv0": 8}
    architecture = Architecture(load_spec(write_spec(tmp_path / "s.txt", data)).model_config, 5,
                                (128, 128), TINY, widths)
    pruned = tmp_path / "pruned" / "model.tlt"
    save_model(pruned, KEY, architecture, architecture.build(), manifest={"epoch": 0, "step": 0})
    spec = write_spec(tmp_path / "spec.txt", data, evaluation="eval_after_training: false",
                      training=f'num_epochs: 1 pruned_model_path: "{pruned}" checkpoint: "{pruned}"')
    train(spec, tmp_path / "m", KEY, variant=get_variant("efficientdet-d0"))
    loaded = load_model(tmp_path / "m" / "model.tlt", KEY)
    assert loaded.architecture.widths == widths and loaded.architecture.variant == TINY
    conv = next(v for v in loaded.model.weights if v.path == "class_net_conv0/pointwise_kernel")
    assert conv.shape[-1] == 8
    alone = write_spec(tmp_path / "alone.txt", data, training=f'pruned_model_path: "{pruned}"')
    trainer = trainer_for(alone, tmp_path / "m2", variant=get_variant("efficientdet-d0"))
    trainer.restore()
    assert_same_weights({v.path: v.numpy() for v in trainer.model.weights},
                        weights_of(pruned))


def test_amp_trains_in_mixed_precision_and_restores_the_policy(data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", data, training="amp: true num_epochs: 1",
                      evaluation="eval_after_training: false")
    result = train(spec, tmp_path / "m", KEY, variant=TINY)
    assert np.isfinite(result.last_losses["total_loss"])
    assert keras.mixed_precision.global_policy().name == "float32"
    assert all(a.dtype == np.float32 for a in weights_of(tmp_path / "m" / "model.tlt").values()
               if a.dtype.kind == "f")


def test_a_category_id_beyond_num_classes_stops_training_naming_it(data, tmp_path):
    # The synthetic data has category ids 1..4; a spec carrying 3 classes (+ background)
    # cannot learn id 4: training stops at the first such record instead of ignoring it.
    spec = write_spec(tmp_path / "spec.txt", data, num_classes=3, training="num_epochs: 1",
                      evaluation="eval_after_training: false")
    with pytest.raises(EffdetError) as info:
        train(spec, tmp_path / "m", KEY, variant=TINY)
    message = str(info.value)
    assert "\n" not in message
    assert "category id 4 of image " in message and "is outside 1..2" in message
    assert "dataset_config.num_classes is 3" in message
