"""Benchmark dataset_convert against merely reading the same image files.

    python scripts/bench_convert.py [--num-images 500] [--workers N] [--workdir DIR]

Generates --num-images 640x480 synthetic JPEGs (effdet.data.synthetic), reads them once to
warm the page cache, then measures, each as the best of --repeats runs:
  read      open + read every file's bytes (one process)
  decode    read + full PIL decode (one process), for context
  convert   dataset_convert end to end (worker pool start-up included)
and prints images/s, MB/s of input and convert's ratio to the read-only rate.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset


def _best(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _read_all(files: list[Path]) -> None:
    for f in files:
        f.read_bytes()


def _decode_all(files: list[Path]) -> None:
    for f in files:
        Image.open(io.BytesIO(f.read_bytes())).load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=None, help="default: all usable CPUs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        data = make_dataset(root / "data", args.num_images, 640, 480, seed=0, val_fraction=0.0)
        files = sorted(data.image_dir.glob("*.jpg"))
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        _read_all(files)  # warm the page cache

        def convert() -> None:
            dataset_convert(data.image_dir, data.train_json, root / "out", workers=args.workers)

        rows = {
            "read": _best(args.repeats, lambda: _read_all(files)),
            "decode (1 process)": _best(args.repeats, lambda: _decode_all(files)),
            "convert": _best(args.repeats, convert),
        }
    n = len(files)
    print(f"{n} images, {megabytes:.1f} MB ({megabytes / n * 1e3:.0f} kB each)")
    for name, seconds in rows.items():
        print(f"{name:>20}: {n / seconds:9.0f} images/s {megabytes / seconds:8.1f} MB/s")
    print(f"convert / read = {rows['read'] / rows['convert']:.1%}")


if __name__ == "__main__":
    main()
