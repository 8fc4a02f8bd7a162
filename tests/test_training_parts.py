"""Training building blocks, each checked alone: LR schedule, weight decay, EMA, checkpoints."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from effdet.spec import parse_spec
from effdet.tasks.train import Steps
from effdet.training.checkpoints import checkpoint_path, checkpoints, rotate
from effdet.training.ema import WeightAverage
from effdet.training.regularization import decayed_kernels, weight_decay
from effdet.training.schedule import WarmupCosine
from tests.spec_support import complete


def test_schedule_warms_up_linearly_then_cosine_decays_to_zero():
    schedule = WarmupCosine(peak=0.1, warmup_init=0.01, warmup_steps=10, total_steps=110)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(5)) == pytest.approx(0.055)
    assert float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(60)) == pytest.approx(0.05, rel=1e-5)
    assert float(schedule(35)) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.25)), rel=1e-5)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule(500)) == pytest.approx(0.0, abs=1e-7)


def test_steps_follow_epochs_batch_and_stop_at_epoch():
    config = parse_spec(complete(
        "training_config { num_examples_per_epoch: 100 train_batch_size: 8 "
        "num_epochs: 10 lr_warmup_epoch: 2.5 stop_at_epoch: 4 }\n"
        "eval_config { eval_epoch_cycle: 1 }"))
    steps = Steps.of(config)
    # TAO: warm-up int(2.5 * 100 / 8) = 31 steps, schedule int(10 * 100 / 8) = 125
    assert (steps.per_epoch, steps.total, steps.stop, steps.warmup) == (12, 125, 48, 31)


def test_weight_decay_counts_kernels_only_with_l2_and_true_l1():
    dense = keras.layers.Dense(3, name="head")
    conv = keras.layers.Conv2D(2, 1, name="c")
    model = keras.Sequential([keras.Input((4, 4, 1)), conv, keras.layers.Flatten(), dense])
    kernels = decayed_kernels(model.trainable_variables)
    assert {k.path.split("/", 1)[1] for k in kernels} == {"c/kernel", "head/kernel"}
    values = [np.asarray(k.numpy()) for k in kernels]
    l2 = sum(float(np.sum(v ** 2)) / 2 for v in values)
    l1 = sum(float(np.sum(np.abs(v))) for v in values)
    assert float(weight_decay(kernels, 0.1, 0.0)) == pytest.approx(0.1 * l2, rel=1e-5)
    assert float(weight_decay(kernels, 0.0, 0.2)) == pytest.approx(0.2 * l1, rel=1e-5)
    assert float(weight_decay(kernels, 0.1, 0.2)) == pytest.approx(0.1 * l2 + 0.2 * l1, rel=1e-5)


def test_ema_follows_reference_decay_and_differs_from_raw():
    variable = keras.Variable(np.zeros(3, np.float32), name="w")
    ema = WeightAverage([variable], decay=0.9)
    variable.assign(np.ones(3, np.float32))
    ema.update(tf.constant(0))  # decay = min(0.9, 1/10) = 0.1
    np.testing.assert_allclose(ema.shadows[0].numpy(), 0.9)
    ema.update(tf.constant(1000))  # decay = 0.9
    np.testing.assert_allclose(ema.shadows[0].numpy(), 0.9 * 0.9 + 0.1, rtol=1e-6)
    assert list(ema.arrays()) == [variable.path]


def test_checkpoint_rotation_keeps_newest(tmp_path):
    for epoch in (1, 2, 3, 10):
        checkpoint_path(tmp_path, epoch).write_bytes(b"x")
    (tmp_path / ".model.epoch-11.tlt.tmp-1").write_bytes(b"partial")
    assert [e for e, _ in checkpoints(tmp_path)] == [1, 2, 3, 10]
    removed = rotate(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["model.epoch-1.tlt", "model.epoch-2.tlt"]
    assert [e for e, _ in checkpoints(tmp_path)] == [3, 10]
