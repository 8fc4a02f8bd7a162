"""Print trainable params and GMACs of every EfficientDet variant, then time D0 on CPU.

    PYTHONPATH=. python scripts/bench_model.py [--skip-latency] [--profiler] [--variants d0,d1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from effdet.model import VARIANTS, build_efficientdet
from effdet.model.complexity import conv_macs, trainable_params
from effdet.spec.config import ModelConfig

NUM_CLASSES = 90


def profiler_gmacs(model: keras.Model) -> float:
    """TF profiler float ops / 2 of the frozen batch-1 graph (how the reference measured GMACs);
    unlike `conv_macs` it also counts BatchNorm, activations, fusion and additions."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    graph_def = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops / 2e9


def model_config_for(name: str) -> ModelConfig:
    variant = VARIANTS[name]
    return ModelConfig(model_name=name, anchor_scale=variant.anchor_scale,
                       max_level=variant.max_level)


def report_sizes(names: list[str], profile: bool) -> None:
    print(f"{'variant':18} {'input':>6} {'params':>12} {'conv GMACs':>11}"
          + (f" {'profiler GMACs':>15}" if profile else ""))
    for name in names:
        variant = VARIANTS[name]
        size = (variant.image_size, variant.image_size)
        model = build_efficientdet(model_config_for(name), NUM_CLASSES, size)
        line = (f"{name:18} {variant.image_size:>6} {trainable_params(model):>12,} "
                f"{conv_macs(model) / 1e9:>11.2f}")
        if profile:
            line += f" {profiler_gmacs(model):>15.2f}"
        print(line, flush=True)
        del model
        keras.backend.clear_session()


def time_forward(model: keras.Model, batch: int, jit: bool, runs: int) -> float:
    images = tf.random.uniform((batch, *model.input_shape[1:3], 3))
    forward = tf.function(lambda x: model(x, training=False), jit_compile=jit)
    for _ in range(3):  # warm-up, includes tracing/compilation
        forward(images)[0][0].numpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(images)[0][0].numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def report_latency(runs: int) -> None:
    model = build_efficientdet(ModelConfig(), NUM_CLASSES, (512, 512))
    print(f"\nD0 512x512 forward, CPU ({tf.config.threading.get_intra_op_parallelism_threads() or 'all'}"
          f" threads), median of {runs} runs after warm-up")
    for jit in (False, True):
        for batch in (1, 8):
            ms = time_forward(model, batch, jit, runs)
            print(f"  graph{' + XLA' if jit else '      '}  batch {batch}: {ms:8.1f} ms "
                  f"({ms / batch:6.1f} ms/image)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="all",
                        help="comma-separated, e.g. d0,d3 (default all)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--profiler", action="store_true",
                        help="also count all ops with the TF profiler (slow for D5+)")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    names = list(VARIANTS) if args.variants == "all" else [
        f"efficientdet-{v.strip().lower()}" for v in args.variants.split(",")]
    report_sizes(names, args.profiler)
    if not args.skip_latency:
        report_latency(args.runs)


if __name__ == "__main__":
    main()
