"""Training speed with and without the run-time settings that make CPU training reproducible.

    PYTHONPATH=. python scripts/bench_reproducible.py [--image-size 128] [--batch-size 8]
                                                      [--steps 8] [--rounds 3]

EfficientDet-D0's train step (forward, losses, backward, SGD, EMA) on a fixed batch, in a
fresh process per measurement because TensorFlow's thread pools are fixed per process:
"defaults" is TensorFlow's own set-up, "reproducible" what `effdet train` runs with on CPU
(one executor thread, Grappler off; effdet/training/reproducible.py). The processes alternate
(A B A B ...); the script prints each mode's median and min–max images/s and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""\
    import contextlib, sys, time
    from pathlib import Path
    import tensorflow as tf
    sys.path.insert(0, sys.argv[5])
    import effdet.tasks.train as train_task
    from bench_train import experiment
    from effdet.training.reproducible import fixed_graph_rewrites
    mode, shards, size, batch, _, steps = sys.argv[1:7]
    if mode == "defaults":
        train_task.use_one_executor_thread = lambda: False
    trainer = train_task.Trainer(experiment(Path(shards), int(size), int(batch), False), None, "k",
                                 gpus=1, gpu_index=None, variant=None)
    trainer.arch = trainer.architecture()
    trainer.build(trainer.arch)
    with fixed_graph_rewrites() if mode == "reproducible" else contextlib.nullcontext():
        fixed = iter(tf.data.Dataset.from_tensors(next(iter(trainer.dataset(0)))).repeat())
        loop = trainer.make_loop()
        loop(fixed, tf.constant(1))  # trace
        start = time.perf_counter()
        loop(fixed, tf.constant(int(steps)))
    print(int(steps) * int(batch) / (time.perf_counter() - start))
    """)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed train steps per process")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from effdet.data.convert import dataset_convert
    from effdet.data.synthetic import make_dataset

    scripts = Path(__file__).resolve().parent
    rates: dict[str, list[float]] = {"defaults": [], "reproducible": []}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = make_dataset(root / "data", 32, 640, 480, seed=0, val_fraction=0.0)
        dataset_convert(data.image_dir, data.train_json, root / "shards", num_shards=2)
        child = root / "child.py"
        child.write_text(CHILD)
        for round_index in range(args.rounds):
            for mode in rates:
                result = subprocess.run(
                    [sys.executable, str(child), mode, str(root / "shards"),
                     str(args.image_size), str(args.batch_size), str(scripts), str(args.steps)],
                    capture_output=True, text=True, check=True)
                rates[mode].append(float(result.stdout.split()[-1]))
                print(f"round {round_index + 1} {mode:12} {rates[mode][-1]:7.2f} images/s",
                      flush=True)
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    for mode, values in rates.items():
        print(f"{mode:12} median {medians[mode]:7.2f} images/s [{min(values):.2f}–{max(values):.2f}]")
    print(f"reproducible / defaults: {medians['reproducible'] / medians['defaults']:.2f}x")


if __name__ == "__main__":
    main()
