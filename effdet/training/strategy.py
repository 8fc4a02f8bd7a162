"""Which tf.distribute strategy a run uses: one device, several GPUs, or several workers."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence

import keras
import tensorflow as tf

from effdet.errors import EffdetError

log = logging.getLogger("effdet")


def select_gpu(gpu_index: int | Sequence[int] | None) -> None:
    """Restrict TensorFlow to the listed GPUs (TAO's --gpu_index); a no-op on CPU-only
    machines."""
    if gpu_index is None:
        return
    indices = [gpu_index] if isinstance(gpu_index, int) else list(gpu_index)
    named = " ".join(map(str, indices))
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        log.warning("--gpu_index %s ignored: no GPU visible", named)
        return
    if not all(0 <= i < len(gpus) for i in indices):
        raise EffdetError(f"--gpu_index {named}: only {len(gpus)} GPU(s) visible")
    tf.config.set_visible_devices([gpus[i] for i in indices], "GPU")


def _slurm_multi_task() -> bool:
    """Inside an srun step with several tasks. SLURM_NTASKS alone (a batch script that did
    not srun) is one process: SlurmClusterResolver reads the SLURM_STEP_* variables."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def slurm_cluster_resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster of the current srun step, one worker per task.

    On GPU nodes this is TF's SlurmClusterResolver as is (it gives each task its share of
    the node's GPUs via CUDA_VISIBLE_DEVICES). On CPU-only nodes that resolver fails (it
    counts GPUs with nvidia-smi and hands out one port per GPU), so the cluster is resolved
    with one notional slot per task and passed on without accelerators.
    """
    from tensorflow.python.distribute.cluster_resolver import slurm_cluster_resolver as slurm

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        gpus = 0  # GPUs hidden (TF's count would say 1)
    else:
        try:
            gpus = slurm.get_num_gpus()
        except (RuntimeError, OSError):  # no nvidia-smi: a CPU node
            gpus = 0
    tasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
    if gpus:
        # e.g. "4(x2)" or "4,3": the first node's count (the largest in Slurm's block layout)
        per_node = int(re.match(r"\d*", os.environ.get("SLURM_STEP_TASKS_PER_NODE", "")).group()
                       or 1)
        if per_node > gpus:  # TF's resolver would divide the node's GPUs down to zero
            raise EffdetError(f"Slurm: {per_node} tasks per node but {gpus} GPU(s) per node; "
                              "ask for one task per GPU (tasks_per_node <= gpus)")
        return tf.distribute.cluster_resolver.SlurmClusterResolver()
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
        gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
    spec = resolver.cluster_spec()  # also sets task_type / task_id
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, master=resolver.master(), task_type=resolver.task_type, task_id=resolver.task_id,
        num_accelerators={"GPU": 0}, rpc_layer=resolver.rpc_layer)


def make_strategy(gpus: int, gpu_index: int | Sequence[int] | None = None) -> tf.distribute.Strategy:
    """MultiWorkerMirrored from TF_CONFIG or Slurm (srun with several tasks), Mirrored for
    --gpus N > 1, otherwise the default single-device strategy."""
    if os.environ.get("TF_CONFIG"):
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
    if _slurm_multi_task():
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm_cluster_resolver())
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


def batch_norm_statistics(model: keras.Model) -> list[keras.Variable]:
    """The moving mean/variance that each replica updates from its own batch: those of every
    BatchNormalization layer that trains (frozen ones run in inference mode and never change)
    and is not synchronised (those see the same global statistics on every replica)."""
    return [weight for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
            and not layer.synchronized
            for weight in (layer.moving_mean, layer.moving_variance)]


def sum_across_replicas(tensors: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
    """Inside `strategy.run`: each tensor summed over all replicas (None stays None), in one
    batched all-reduce; the tensors themselves with a single replica."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return list(tensors)
    summed = iter(context.all_reduce(tf.distribute.ReduceOp.SUM,
                                     [t for t in tensors if t is not None]))
    return [None if t is None else next(summed) for t in tensors]


class SummedGradientSGD(keras.optimizers.SGD):
    """SGD for gradients the caller has already summed over replicas.

    Keras sums the replicas' gradients only after clipping them, so each replica's share is
    clipped on its own and N replicas allow about N x `global_clipnorm`. Summing first (see
    `sum_across_replicas`) and skipping Keras's own all-reduce clips the gradient of the
    global batch, as TAO (Horovod averages in compute_gradients, then clip_by_global_norm).
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


def average_across_replicas(variables: list[keras.Variable]) -> None:
    """Inside `strategy.run`: set each variable to its mean over all replicas.

    Keras 3 creates BatchNormalization's moving statistics with aggregation NONE, so under
    a Mirrored/MultiWorkerMirrored strategy every replica updates its own copy from its own
    batch and the copies drift apart (workers would save different models). The moving
    averages are linear in the batch statistics, so averaging them after each step equals
    tf.keras 2's ON_READ/MEAN statistics and keeps every replica identical. One batched
    all-reduce; a no-op with a single replica.
    """
    context = tf.distribute.get_replica_context()
    if not variables or context is None or context.num_replicas_in_sync == 1:
        return
    # The batched all-reduce sends each tensor to its own device; inside a tf.function under
    # MultiWorkerMirroredStrategy a plain read carries no device ("destinations can not be
    # empty"), so read each value on its variable's device.
    local = []
    for variable in variables:
        with tf.device(variable.value.device):
            local.append(tf.identity(variable.value))
    means = context.all_reduce(tf.distribute.ReduceOp.MEAN, local)
    for variable, mean in zip(variables, means):
        variable.assign(mean)
