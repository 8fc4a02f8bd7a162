"""Which tf.distribute strategy a run uses: one device, several GPUs, or several workers."""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from effdet.errors import EffdetError

log = logging.getLogger("effdet")


def select_gpu(gpu_index: int | None) -> None:
    """Restrict TensorFlow to one GPU (TAO's --gpu_index); a no-op on CPU-only machines."""
    if gpu_index is None:
        return
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        log.warning("--gpu_index %d ignored: no GPU visible", gpu_index)
        return
    if not 0 <= gpu_index < len(gpus):
        raise EffdetError(f"--gpu_index {gpu_index}: only {len(gpus)} GPU(s) visible")
    tf.config.set_visible_devices(gpus[gpu_index], "GPU")


def _slurm_multi_task() -> bool:
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1"))) > 1


def make_strategy(gpus: int, gpu_index: int | None = None) -> tf.distribute.Strategy:
    """MultiWorkerMirrored from TF_CONFIG or Slurm (srun with several tasks), Mirrored for
    --gpus N > 1, otherwise the default single-device strategy."""
    if os.environ.get("TF_CONFIG"):
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
    if _slurm_multi_task():
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    select_gpu(gpu_index)
    if gpus > 1:
        available = tf.config.list_logical_devices("GPU")
        if len(available) < gpus:
            raise EffdetError(f"--gpus {gpus}: only {len(available)} GPU(s) visible")
        return tf.distribute.MirroredStrategy([d.name for d in available[:gpus]])
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints, logs and metrics."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                              and "chief" not in resolver.cluster_spec().as_dict())
