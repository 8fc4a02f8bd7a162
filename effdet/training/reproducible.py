"""TensorFlow's run-time settings that make CPU training bit-reproducible.

With op determinism on, each kernel is deterministic, but two things around the kernels
were not (measured on the demo's full D0, batch 8; tests/test_reproducible.py):
- TensorFlow's CPU AddN accumulates into whichever input buffer it may reuse, trying input 0
  first; an input whose producer thread still holds it cannot be reused, so the inputs are
  added in an order that depends on thread timing. The tape sums a shared head kernel's
  per-level gradients with one AddN: the same two steps repeated in one process differed in
  the head kernels' last bits 8 times in 10. One inter-op (executor) thread fixes the order
  in which ops finish; each kernel still uses every core through the intra-op pool.
- Grappler rewrote the training graph differently from one process to the next (the weights
  of two processes differed after four steps with every single rewriter switched off in
  turn, and agreed with the whole meta-optimizer off), so it is off while training runs.
Together: four processes training side by side gave the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import tensorflow as tf

log = logging.getLogger("effdet")


def use_one_executor_thread() -> bool:
    """Ask for one inter-op thread on CPU-only machines (GPU replicas need their own
    launcher threads); returns whether training runs with it. Must precede TensorFlow's
    initialisation: a process that already ran TensorFlow ops keeps its thread count, with
    a warning, and trains as before, not bit-for-bit reproducibly."""
    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning("TensorFlow was initialised before training with %s inter-op threads; "
                    "this training is not bit-for-bit reproducible",
                    tf.config.threading.get_inter_op_parallelism_threads() or "the default")
        return False
    return True


@contextmanager
def fixed_graph_rewrites() -> Iterator[None]:
    """Grappler off for the functions traced inside (CPU only: on a GPU its layout rewrites
    are worth more than bit-reproducibility); the previous options come back afterwards."""
    if tf.config.list_physical_devices("GPU"):
        yield
        return
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": before.get("disable_meta_optimizer", False)})
