"""Make the synthetic shapes dataset (effdet.data.synthetic) used by the demo and tests.

    python scripts/make_demo_data.py --out data/demo --num-images 100 --size 320x240 --seed 0

--size is WIDTHxHEIGHT. Writes OUT/images/NNNNNN.jpg and OUT/annotations/{train,val}.json;
the last --val-fraction of the images form the val split. Reruns with the same arguments
give byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from effdet.data.synthetic import make_dataset

log = logging.getLogger("effdet")


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, each at least 32")
    return int(match[1]), int(match[2])


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction in [0, 1)")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--size", type=_size, default=(320, 240), help="WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=_fraction, default=0.2)
    args = parser.parse_args()
    if args.num_images < 1:
        parser.error("--num-images must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    width, height = args.size
    summary = make_dataset(args.out, args.num_images, width, height, args.seed, args.val_fraction)
    log.info("wrote %d images to %s, annotations %s and %s", summary.images,
             summary.image_dir, summary.train_json, summary.val_json)


if __name__ == "__main__":
    main()
