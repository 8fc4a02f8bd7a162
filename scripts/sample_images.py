"""Copy the first N validation images (in the annotation file's order) to a sample folder.

    python scripts/sample_images.py --images DIR --annotations val.json --num-images 8 --out DIR

The workflow's inference rule runs on these, so the report shows a few annotated images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="the dataset's image folder")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO json of the split")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    images = json.loads(args.annotations.read_text())["images"]
    chosen = [image["file_name"] for image in images[:args.num_images]]
    if not chosen:
        print(f"{args.annotations}: no images", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        source = args.images / name
        shutil.copyfile(source, args.out / Path(name).name)
    print(f"copied {len(chosen)} images from {args.images} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
