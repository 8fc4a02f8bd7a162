"""Benchmark training throughput on this machine: the train step and the input pipeline.

    python scripts/bench_train.py [--image-size 512] [--batch-sizes 4 8] [--steps 5] [--xla both]

For EfficientDet-D0 at --image-size, for each batch size: images/s of the compiled train step
(forward, losses, backward, SGD, EMA) on a fixed batch, with and without XLA, and images/s of
the input pipeline alone (decode, augment, anchor labels) on generated 640x480 JPEG shards.
The pipeline keeps the model busy when its rate is well above the step's.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import tensorflow as tf
from bench_pipeline import images_per_second  # scripts/ is on sys.path when run as a script

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset
from effdet.spec.config import ExperimentConfig
from effdet.tasks.train import Trainer

KEY = "bench"


def experiment(shards: Path, image_size: int, batch_size: int, use_xla: bool) -> ExperimentConfig:
    base = ExperimentConfig()
    return dataclasses.replace(
        base,
        dataset_config=dataclasses.replace(base.dataset_config, num_classes=5,
                                           training_file_pattern=str(shards / "train-*"),
                                           image_size=(image_size, image_size)),
        # the EMA and weight decay the figures were measured with (TAO's defaults have neither)
        training_config=dataclasses.replace(base.training_config, train_batch_size=batch_size,
                                            use_xla=use_xla, moving_average_decay=0.9998,
                                            l2_weight_decay=0.00004))


def step_rate(config: ExperimentConfig, workdir: Path, steps: int) -> float:
    trainer = Trainer(config, workdir, KEY, gpus=1, gpu_index=None, variant=None)
    trainer.arch = trainer.architecture()
    trainer.build(trainer.arch)
    batch = next(iter(trainer.dataset(0)))
    fixed = iter(tf.data.Dataset.from_tensors(batch).repeat())
    loop = trainer.make_loop()
    loop(fixed, tf.constant(1))  # trace and compile
    start = time.perf_counter()
    loop(fixed, tf.constant(steps))
    return steps * config.training_config.train_batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--steps", type=int, default=5, help="timed train steps")
    parser.add_argument("--xla", choices=["off", "on", "both"], default="both")
    args = parser.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.xla]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = make_dataset(root / "data", 96, 640, 480, seed=0, val_fraction=0.0)
        dataset_convert(data.image_dir, data.train_json, root / "shards", num_shards=4)
        print(f"EfficientDet-D0 {args.image_size}x{args.image_size}, images/s on "
              f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")
        for batch_size in args.batch_sizes:
            for use_xla in modes:
                config = experiment(root / "shards", args.image_size, batch_size, use_xla)
                rate = step_rate(config, root / "model", args.steps)
                print(f"train step  batch {batch_size}  xla {'on ' if use_xla else 'off'}  "
                      f"{rate:7.2f} images/s", flush=True)
            config = experiment(root / "shards", args.image_size, batch_size, False)
            rate = images_per_second(config, batch_size, batches=20)
            print(f"pipeline    batch {batch_size}           {rate:7.2f} images/s", flush=True)


if __name__ == "__main__":
    main()
