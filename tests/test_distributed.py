"""Multi-worker training: strategy selection (TF_CONFIG, Slurm), chief election, and two CPU
workers on localhost that end with identical weights while only the chief writes files."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.distribute.cluster_resolver import slurm_cluster_resolver

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset
from effdet.errors import EffdetError
from effdet.formats.tlt import read_tlt
from effdet.losses import detection_loss
from effdet.model.layers import BN_EPSILON, BN_MOMENTUM, LayerFactory, SyncBatchNormalization
from effdet.model.saving import EMA, OPTIMIZER, WEIGHTS, members_to_arrays
from effdet.model.variants import get_variant
from effdet.spec import load_spec
from effdet.tasks.train import Trainer
from effdet.training.strategy import (
    average_across_replicas, batch_norm_statistics, is_chief, make_strategy,
)
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
KEY = "distributed-test-Key-3"
TIMEOUT = 600  # per worker; a busy 2-core machine needs minutes for the first steps

# One training worker: the real Trainer (what `train()` runs), then a per-variable digest of
# the model weights, EMA shadows and optimizer state it ends with.
WORKER = """
import hashlib, json, logging, sys
from pathlib import Path
import numpy as np
from effdet.model.variants import get_variant
from effdet.spec import load_spec
from effdet.tasks.train import Trainer

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
spec, model_dir, key, out = sys.argv[1:5]
variant = get_variant("efficientdet-d0").replace(**json.loads(sys.argv[5]))
trainer = Trainer(load_spec(Path(spec)), Path(model_dir), key, gpus=1, gpu_index=None,
                  variant=variant, **json.loads(sys.argv[6]))
result = trainer.run()

def digest(value):
    return hashlib.sha256(np.ascontiguousarray(np.asarray(value)).tobytes()).hexdigest()

shadows = trainer.ema.shadows if trainer.ema is not None else []
Path(out).write_text(json.dumps({
    "chief": trainer.chief, "replicas": trainer.replicas, "step": result.step,
    "weights": {v.path: digest(v.numpy()) for v in trainer.model.weights},
    "ema": [digest(s.numpy()) for s in shadows],
    "optimizer": [digest(v.numpy()) for v in trainer.optimizer.variables],
}))
"""

TINY = {"fpn_num_filters": 16, "fpn_cell_repeats": 1, "box_class_repeats": 1,
        "width_coefficient": 0.25, "depth_coefficient": 0.25}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(tf_config: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(TF_CONFIG=json.dumps(tf_config), PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="1")
    return env


def write_spec(path: Path, tfrecords: Path, batch: int, examples: int = 8,
               training: str = "learning_rate: 0.01 lr_warmup_init: 0.001 "
                               "moving_average_decay: 0.9998 l2_weight_decay: 0.00004 "
                               "clip_gradients_norm: 10") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(complete(f"""
training_config {{
  train_batch_size: {batch}
  iterations_per_loop: 2
  checkpoint_period: 1
  num_examples_per_epoch: {examples}
  num_epochs: 2
  logging_frequency: 1
  lr_warmup_epoch: 1
  {training}
}}
dataset_config {{
  num_classes: 5
  image_size: "128,128"
  training_file_pattern: "{tfrecords}/train-*"
}}
eval_config {{
  eval_epoch_cycle: 2
  eval_after_training: false
}}
augmentation_config {{
  rand_hflip: true
}}
"""))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    data = make_dataset(root / "raw", num_images=8, width=160, height=120, seed=5,
                        val_fraction=0.0)
    dataset_convert(data.image_dir, data.train_json, root / "tfrecords", tag="train",
                    num_shards=2, workers=1)
    write_spec(root / "spec.txt", root / "tfrecords", batch=2)
    return root


def run_workers(root: Path, count: int, options: dict | None = None) -> list[dict]:
    """`count` workers training root/spec.txt into root/model<i>; `options` are further
    Trainer arguments."""
    ports = free_ports(count)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs, logs = [], []
    try:
        for index in range(count):
            log = open(root / f"worker{index}.log", "wb")
            logs.append(log)
            args = [sys.executable, "-c", WORKER, str(root / "spec.txt"),
                    str(root / f"model{index}"), KEY, str(root / f"out{index}.json"),
                    json.dumps(TINY), json.dumps(options or {})]
            env = worker_env({"cluster": cluster, "task": {"type": "worker", "index": index}})
            procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
        for proc in procs:
            proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        tails = "\n".join(f"--- worker {i} (exit {procs[i].returncode}):\n" +
                          (root / f"worker{i}.log").read_text(errors="replace")[-3000:]
                          for i in failed)
        pytest.fail(f"worker(s) {failed} failed or timed out:\n{tails}")
    return [json.loads((root / f"out{i}.json").read_text()) for i in range(count)]


def test_two_workers_end_identical_and_only_the_chief_writes(workspace):
    chief, other = run_workers(workspace, 2)

    assert (chief["chief"], other["chief"]) == (True, False)
    assert chief["replicas"] == other["replicas"] == 2
    # As TAO: an epoch is 8 / 2 steps of each worker (its per-GPU batch), 2 epochs
    assert chief["step"] == other["step"] == 8
    differing = [p for p in chief["weights"] if chief["weights"][p] != other["weights"][p]]
    assert not differing, f"weights differ between workers: {differing[:5]}"
    assert chief["weights"] == other["weights"]
    assert chief["ema"] == other["ema"] and chief["ema"]
    assert chief["optimizer"] == other["optimizer"] and chief["optimizer"]

    chief_dir, other_dir = workspace / "model0", workspace / "model1"
    written = {p.name for p in chief_dir.iterdir()}
    assert {"model.epoch-1.tlt", "model.epoch-2.tlt", "model.tlt", "status.json"} <= written
    assert not other_dir.exists() or not list(other_dir.rglob("*"))

    # The chief's saved model is what the other worker holds in memory.
    saved = members_to_arrays(WEIGHTS, read_tlt(chief_dir / "model.tlt", KEY).members)
    assert set(saved) == set(other["weights"])
    for path, array in saved.items():
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        assert digest == other["weights"][path], path


# Every term that could tell two replicas from one big batch: a clipping threshold far below
# the gradient norm (with a learning rate that makes the clipped steps visible), weight decay
# of both kinds and a fast EMA.
ONE_BATCH = ("clip_gradients_norm: 0.01 learning_rate: 0.5 lr_warmup_init: 0.5 "
             "moving_average_decay: 0.9 l2_weight_decay: 0.001 l1_weight_decay: 0.0001")
SYNC_BN = {"sync_bn": True}


def checkpoint_arrays(path: Path) -> dict[str, np.ndarray]:
    members = read_tlt(path, KEY).members
    return {f"{group}/{name}": array for group in (WEIGHTS, EMA, OPTIMIZER)
            for name, array in members_to_arrays(group, members).items()}


def test_two_workers_train_like_one_process_on_the_concatenated_batch(workspace):
    root = workspace / "one-batch"
    # As TAO, an epoch is num_examples_per_epoch / the per-worker batch steps: 4 / 2 here and
    # 8 / 4 for the single process, so both take 2 steps an epoch on the same images.
    write_spec(root / "spec.txt", workspace / "tfrecords", batch=2, examples=4,
               training=ONE_BATCH)
    chief, other = run_workers(root, 2, SYNC_BN)
    assert chief["step"] == other["step"] == 4
    # Synchronised layers' moving statistics are not averaged: they agree by themselves.
    assert chief["weights"] == other["weights"] and chief["ema"] == other["ema"]

    spec = write_spec(root / "single.txt", workspace / "tfrecords", batch=4, training=ONE_BATCH)
    single = Trainer(load_spec(spec), root / "single", KEY, gpus=1, gpu_index=None,
                     variant=get_variant("efficientdet-d0").replace(**TINY), **SYNC_BN)
    assert single.run().step == 4

    # The threshold binds: the concatenated batch's gradient is far longer than it.
    images, labels = next(iter(single.dataset(0)))
    with tf.GradientTape() as tape:
        class_out, box_out = single.model(images, training=True)
        loss = detection_loss(class_out, box_out, labels, [3, 4, 5, 6, 7], 4)["total_loss"]
    gradients = tape.gradient(loss, single.model.trainable_variables)
    assert float(tf.linalg.global_norm(gradients)) > 100 * single.training.clip_gradients_norm

    two = checkpoint_arrays(root / "model0" / "model.epoch-2.tlt")
    one = checkpoint_arrays(root / "single" / "model.epoch-2.tlt")
    assert set(two) == set(one)
    assert any(name.startswith(f"{EMA}/") for name in one)
    assert any(name.endswith("moving_variance") for name in one)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name)


# --------------------------------------------------------------- selection, in-process


class FakeMultiWorker:
    """Stands in for MultiWorkerMirroredStrategy (a real one would wait for its peers)."""

    def __init__(self, cluster_resolver=None):
        self.cluster_resolver = cluster_resolver


@pytest.fixture
def no_cluster_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SLURM_") or name == "TF_CONFIG":
            monkeypatch.delenv(name)
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorker)
    return monkeypatch


def test_tf_config_with_two_workers_selects_multi_worker(no_cluster_env):
    no_cluster_env.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["localhost:1", "localhost:2"]},
        "task": {"type": "worker", "index": 1}}))
    strategy = make_strategy(gpus=1)
    assert isinstance(strategy, FakeMultiWorker)
    assert strategy.cluster_resolver is None  # MWMS reads TF_CONFIG itself


def test_single_task_tf_config_or_slurm_job_stays_single_device(no_cluster_env):
    no_cluster_env.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}))
    no_cluster_env.setenv("SLURM_NTASKS", "4")  # a batch script that did not srun
    no_cluster_env.setenv("SLURM_STEP_NUM_TASKS", "1")
    strategy = make_strategy(gpus=1)
    assert not isinstance(strategy, FakeMultiWorker)
    assert strategy.num_replicas_in_sync == 1 and is_chief(strategy)
    no_cluster_env.delenv("SLURM_STEP_NUM_TASKS")
    assert not isinstance(make_strategy(gpus=1), FakeMultiWorker)


def test_slurm_step_with_several_tasks_uses_the_slurm_cluster(no_cluster_env):
    no_cluster_env.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    no_cluster_env.setattr(slurm_cluster_resolver, "get_num_gpus", lambda: 0)
    no_cluster_env.setenv("SLURM_STEP_NUM_TASKS", "3")
    no_cluster_env.setenv("SLURM_STEP_NODELIST", "node[01-02]")
    no_cluster_env.setenv("SLURM_STEP_TASKS_PER_NODE", "2,1")
    no_cluster_env.setenv("SLURM_PROCID", "1")
    strategy = make_strategy(gpus=1)
    assert isinstance(strategy, FakeMultiWorker)
    resolver = strategy.cluster_resolver
    assert resolver.cluster_spec().as_dict() == {
        "worker": ["node01:8888", "node01:8889", "node02:8888"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert resolver.num_accelerators() == {"GPU": 0}  # CPU nodes: no nvidia-smi needed
    assert not is_chief(strategy)
    no_cluster_env.setenv("SLURM_PROCID", "0")
    assert is_chief(make_strategy(gpus=1))
    no_cluster_env.setattr(slurm_cluster_resolver, "get_num_gpus", lambda: 1)
    no_cluster_env.setenv("CUDA_VISIBLE_DEVICES", "")  # hidden GPUs count as none
    assert make_strategy(gpus=1).cluster_resolver.num_accelerators() == {"GPU": 0}


def test_slurm_with_gpus_is_tfs_resolver(no_cluster_env):
    no_cluster_env.setattr(slurm_cluster_resolver, "get_num_gpus", lambda: 2)
    no_cluster_env.setenv("SLURM_STEP_NUM_TASKS", "2")
    no_cluster_env.setenv("SLURM_STEP_NODELIST", "gpu7")
    no_cluster_env.setenv("SLURM_STEP_TASKS_PER_NODE", "2")
    no_cluster_env.setenv("SLURM_PROCID", "1")
    no_cluster_env.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the resolver rewrites it per task
    resolver = make_strategy(gpus=1).cluster_resolver
    assert isinstance(resolver, tf.distribute.cluster_resolver.SlurmClusterResolver)
    assert resolver.cluster_spec().as_dict() == {"worker": ["gpu7:8888", "gpu7:8889"]}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    no_cluster_env.setenv("SLURM_STEP_NUM_TASKS", "3")
    no_cluster_env.setenv("SLURM_STEP_TASKS_PER_NODE", "3")  # more tasks than GPUs
    with pytest.raises(EffdetError, match="3 tasks per node but 2 GPU"):
        make_strategy(gpus=1)


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
    ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False),
])
def test_is_chief(cluster, task, chief):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task[0], task_id=task[1])
    assert is_chief(SimpleNamespace(cluster_resolver=resolver)) is chief


def test_is_chief_without_a_cluster():
    assert is_chief(tf.distribute.get_strategy())
    assert is_chief(SimpleNamespace(cluster_resolver=None))


def test_batch_norm_statistics_skip_frozen_layers_and_averaging_is_a_single_replica_noop():
    live = keras.layers.BatchNormalization(name="live")
    frozen = keras.layers.BatchNormalization(name="frozen")
    model = keras.Sequential([keras.Input((3,)), live, frozen])
    frozen.trainable = False
    stats = batch_norm_statistics(model)
    assert [v.path.split("/")[-2:] for v in stats] == [["live", "moving_mean"],
                                                       ["live", "moving_variance"]]
    stats[0].assign([1.0, 2.0, 3.0])
    tf.function(lambda: tf.distribute.get_strategy().run(
        lambda: average_across_replicas(stats)))()
    np.testing.assert_array_equal(stats[0].numpy(), [1.0, 2.0, 3.0])


def test_sync_batch_norm_with_one_replica_normalises_like_the_plain_layer():
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 5, 5, 3)).astype("float32")
    plain = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
    synced = LayerFactory(sync_bn=True).bn("synced")
    assert isinstance(synced, SyncBatchNormalization) and synced.synchronized
    outputs = [np.asarray(layer(x, training=True)) for layer in (plain, synced)]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(synced.weights, plain.weights):
        assert a.path.split("/")[-1] == b.path.split("/")[-1]
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    # Its moving statistics come from the global batch already: nothing to average.
    assert not batch_norm_statistics(keras.Sequential([keras.Input((5, 5, 3)), synced]))
