"""Benchmark the training input pipeline alone (no model), in images/s.

    python scripts/bench_pipeline.py [--num-images 200] [--batches 30] [--workdir DIR]

Generates --num-images 640x480 synthetic JPEGs (effdet.data.synthetic), converts them to
TFRecord shards (dataset_convert), then for each image size and batch size builds
`train_dataset` for EfficientDet-D0's anchors with the default augmentation, pulls a few
warm-up batches and times --batches more. Prints one line per configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from effdet.anchors import anchors_for
from effdet.data.convert import dataset_convert
from effdet.data.pipeline import train_dataset
from effdet.data.synthetic import make_dataset
from effdet.spec.config import ExperimentConfig

_WARMUP_BATCHES = 3


def images_per_second(config: ExperimentConfig, batch_size: int, batches: int) -> float:
    anchors = anchors_for(config.model_config, config.dataset_config.image_size)
    iterator = iter(train_dataset(config, anchors, batch_size=batch_size))
    for _ in range(_WARMUP_BATCHES):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per configuration")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        data = make_dataset(root / "data", args.num_images, 640, 480, seed=0, val_fraction=0.0)
        dataset_convert(data.image_dir, data.train_json, root / "tfrecords", num_shards=8)
        base = ExperimentConfig()
        for side in args.image_sizes:
            dataset_config = dataclasses.replace(
                base.dataset_config, training_file_pattern=str(root / "tfrecords" / "train-*"),
                image_size=(side, side))
            # the flip the figures were measured with (off in TAO's defaults)
            augmentation = dataclasses.replace(base.augmentation_config, rand_hflip=True)
            config = dataclasses.replace(base, dataset_config=dataset_config,
                                         augmentation_config=augmentation)
            for batch_size in args.batch_sizes:
                rate = images_per_second(config, batch_size, args.batches)
                print(f"efficientdet-d0 {side}x{side} batch {batch_size}: {rate:.1f} images/s")


if __name__ == "__main__":
    main()
