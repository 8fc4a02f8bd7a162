"""Prune a trained D0 and retrain it: the seed's prune → retrain loop, measured on CPU.

    PYTHONPATH=. python scripts/bench_prune.py [--workdir bench/prune] [--epochs 40]

1. Generates shapes data (scripts/make_demo_data.py's generator), trains EfficientDet-D0 on
   it and evaluates it (skipped when WORKDIR/train/model.tlt exists: training resumes).
2. Prunes it at -pth 0.1/0.3/0.5/0.7 (and finer steps until ≤ TARGET of the parameters):
   params, GMACs and CPU latency of each pruned D0 at 512x512, batch 1.
3. Retrains the first pruned model at ≤ TARGET of the parameters (pruned_model_path and
   checkpoint, as TAO's retrain spec) for as many epochs and compares AP50 with the unpruned.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import tensorflow as tf

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset
from effdet.model.complexity import conv_macs, trainable_params
from effdet.model.saving import load_model
from effdet.pruning.surgery import PruneSettings
from effdet.tasks.evaluate import evaluate
from effdet.tasks.prune import prune
from effdet.tasks.train import train

KEY = "bench-prune-key"
TABLE_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)
SEARCH_THRESHOLDS = (0.75, 0.8, 0.85, 0.9, 0.95)
TARGET = 0.6  # issue 6: pruned to at most 60 % of the parameters
MAX_AP50_DROP = 0.03


def write_spec(path: Path, workdir: Path, epochs: int, images: int, size: int,
               pruned: Path | None = None) -> Path:
    retrain = f'pruned_model_path: "{pruned}" checkpoint: "{pruned}"' if pruned else ""
    path.write_text(f"""
training_config {{
  train_batch_size: 8 iterations_per_loop: 1 checkpoint_period: 5 keep_checkpoint_max: 2
  num_examples_per_epoch: {images} num_epochs: {epochs} tf_random_seed: 42
  lr_warmup_epoch: 1 lr_warmup_init: 0.005 learning_rate: 0.08 moving_average_decay: 0.999
  l2_weight_decay: 0.00004 clip_gradients_norm: 10 logging_frequency: 50 {retrain}
}}
dataset_config {{
  num_classes: 5 image_size: "{size},{size}" max_instances_per_image: 20
  training_file_pattern: "{workdir}/tfrecords/train/train-*"
  validation_file_pattern: "{workdir}/tfrecords/val/val-*"
  validation_json_file: "{workdir}/raw/annotations/val.json"
}}
eval_config {{ eval_batch_size: 8 eval_samples: 64 eval_after_training: false eval_epoch_cycle: 2
  max_detections_per_image: 50 }}
model_config {{ model_name: "efficientdet-d0" }}
augmentation_config {{ rand_hflip: true random_crop_min_scale: 0.8 random_crop_max_scale: 1.2 }}
""")
    return path


def latency_ms(model_path: Path, runs: int = 10) -> float:
    """Forward at 512x512, batch 1, graph mode, of the architecture `model_path` records."""
    loaded = load_model(model_path, KEY)
    model = dataclasses.replace(loaded.architecture, image_size=(512, 512)).build()
    forward = tf.function(lambda x: model(x, training=False))
    images = tf.random.uniform((1, 512, 512, 3))
    for _ in range(3):
        forward(images)[0][0].numpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(images)[0][0].numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench/prune"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--images", type=int, default=160, help="training images")
    parser.add_argument("--size", type=int, default=256, help="training image size")
    args = parser.parse_args()
    os.environ.setdefault("EFFDET_KEY", KEY)
    work = args.workdir.resolve()

    if not (work / "tfrecords" / "val").is_dir():
        data = make_dataset(work / "raw", int(args.images / 0.8), args.size, args.size, seed=11,
                            val_fraction=0.2)
        dataset_convert(data.image_dir, data.train_json, work / "tfrecords" / "train",
                        tag="train", num_shards=4)
        dataset_convert(data.image_dir, data.val_json, work / "tfrecords" / "val", tag="val",
                        num_shards=1)
    spec = write_spec(work / "train.txt", work, args.epochs, args.images, args.size)
    start = time.perf_counter()
    train(spec, work / "train", KEY)
    print(f"trained D0 in {time.perf_counter() - start:.0f} s", flush=True)
    base = evaluate(spec, work / "train" / "model.tlt", KEY, output_dir=work / "eval")

    print(f"\n{'-pth':>5} {'params':>11} {'ratio':>6} {'GMACs@512':>9} {'ms@512':>7}")
    original = load_model(work / "train" / "model.tlt", KEY)
    full = dataclasses.replace(original.architecture, image_size=(512, 512)).build()
    print(f"{'none':>5} {trainable_params(full):>11,} {1.0:>6.3f} "
          f"{conv_macs(full) / 1e9:>9.3f} {latency_ms(work / 'train' / 'model.tlt'):>7.1f}",
          flush=True)
    chosen = None
    for threshold in (*TABLE_THRESHOLDS, *SEARCH_THRESHOLDS):
        if threshold in SEARCH_THRESHOLDS and chosen is not None:
            break
        out = work / f"pruned-{threshold}"
        result_path = out / "model.tlt"
        if not result_path.is_file():
            prune(work / "train" / "model.tlt", out, KEY, PruneSettings(threshold=threshold))
        report = json.loads((out / "prune_report.json").read_text())
        ratio = report["params"]["ratio"]
        pruned_512 = dataclasses.replace(load_model(result_path, KEY).architecture,
                                         image_size=(512, 512)).build()
        print(f"{threshold:>5} {report['params']['after']:>11,} {ratio:>6.3f} "
              f"{conv_macs(pruned_512) / 1e9:>9.3f} {latency_ms(result_path):>7.1f}", flush=True)
        if chosen is None and ratio <= TARGET:
            chosen = (threshold, result_path, ratio)
    if chosen is None:
        print(f"no threshold reached {TARGET:.0%} of the parameters")
        return
    threshold, pruned, ratio = chosen
    retrain_spec = write_spec(work / "retrain.txt", work, args.epochs, args.images, args.size,
                              pruned)
    start = time.perf_counter()
    train(retrain_spec, work / "retrain", KEY)
    print(f"\nretrained the -pth {threshold} model ({ratio:.1%} of the parameters) in "
          f"{time.perf_counter() - start:.0f} s")
    again = evaluate(retrain_spec, work / "retrain" / "model.tlt", KEY,
                     output_dir=work / "retrain_eval")
    drop = base["AP50"] - again["AP50"]
    print(f"AP50 unpruned {base['AP50']:.3f}, pruned+retrained {again['AP50']:.3f} "
          f"(drop {drop * 100:+.1f} points; target ≤ {MAX_AP50_DROP * 100:.0f}): "
          f"{'PASS' if drop <= MAX_AP50_DROP else 'FAIL'}")
    print(f"AP unpruned {base['AP']:.3f}, pruned+retrained {again['AP']:.3f}")


if __name__ == "__main__":
    main()
