"""AP of the int8 ONNX Runtime model against the fp32 one, on the demo data and on BCCD.

    PYTHONPATH=. python scripts/bench_int8.py [--workdir bench/int8] [--bccd-epochs 12]
        [--bccd-size 256,384] [--only demo|bccd]

For each dataset: trains EfficientDet-D0 with the experiment's spec (config/specs/demo.txt as
it is; config/specs/bccd.txt at --bccd-size for --bccd-epochs, so that it fits a CPU run) -
skipped when WORKDIR/<name>/train/model.tlt exists - then exports it, builds the fp32 and the
int8 ONNX Runtime models (`gen_trt_engine --engine_file X.onnx`, int8 calibrated on training
images), builds the int8 model a second time from the calibration cache alone, and evaluates
the three with `effdet evaluate`. Prints both APs and the difference (target: within 1 point).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset
from effdet.tasks.engine import gen_trt_engine
from effdet.tasks.evaluate import evaluate
from effdet.tasks.export import export
from effdet.tasks.train import train

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-int8-key"
MAX_AP_DROP = 0.01
CAL_BATCH_SIZE, CAL_BATCHES = 8, 8


def demo_spec(work: Path) -> Path:
    """config/specs/demo.txt reading WORKDIR's data, with the workflow's demo data set."""
    text = (ROOT / "config" / "specs" / "demo.txt").read_text()
    if not (work / "tfrecords" / "val").is_dir():
        # config/config.yaml's demo dataset: 160 images 128x128, seed 7, 20 % val, 2 shards.
        data = make_dataset(work / "raw", 160, 128, 128, seed=7, val_fraction=0.2)
        for split, annotations in (("train", data.train_json), ("val", data.val_json)):
            dataset_convert(data.image_dir, annotations, work / "tfrecords" / split, tag=split,
                            num_shards=2)
    spec = work / "spec.txt"
    spec.write_text(text.replace('"results/demo/', f'"{work}/'))
    return spec


def bccd_spec(work: Path, epochs: int, size: str) -> Path:
    text = (ROOT / "config" / "specs" / "bccd.txt").read_text()
    bccd = ROOT / "data" / "bccd"
    if not (work / "tfrecords" / "val").is_dir():
        for split in ("train", "val"):
            dataset_convert(bccd / "images", bccd / f"{split}.json", work / "tfrecords" / split,
                            tag=split, num_shards=4 if split == "train" else 1)
    text = text.replace('"results/bccd/', f'"{work}/').replace('"data/bccd/', f'"{bccd}/')
    text = re.sub(r"num_epochs: \d+", f"num_epochs: {epochs}", text)
    text = re.sub(r'image_size: "[0-9,]+"', f'image_size: "{size}"', text)
    spec = work / "spec.txt"
    spec.write_text(text)
    return spec


def calibration_images(work: Path, image_dir: Path, train_json: Path, count: int) -> Path:
    """A folder of links to the first `count` training images (calibration never sees val)."""
    folder = work / "calibration"
    folder.mkdir(exist_ok=True)
    names = [image["file_name"] for image in json.loads(train_json.read_text())["images"]]
    for name in names[:count]:
        link = folder / name
        if not link.exists():
            link.symlink_to(image_dir / name)
    return folder


def compare(name: str, work: Path, spec: Path, cal_dir: Path) -> dict[str, float]:
    model = work / "train" / "model.tlt"
    if not model.is_file():
        start = time.perf_counter()
        train(spec, work / "train", KEY)
        print(f"{name}: trained D0 in {time.perf_counter() - start:.0f} s", flush=True)
    exported = export(model, spec, work / "model.etlt", KEY, force=True)  # reruns re-export
    fp32 = gen_trt_engine(exported.onnx_path, None, work / "model.fp32.onnx")
    cache = work / "calibration.json"
    cache.unlink(missing_ok=True)
    start = time.perf_counter()
    int8 = gen_trt_engine(exported.onnx_path, None, work / "model.int8.onnx", data_type="int8",
                          cal_image_dir=cal_dir, cal_cache_file=cache,
                          batch_size=CAL_BATCH_SIZE, batches=CAL_BATCHES)
    print(f"{name}: int8 build with calibration {time.perf_counter() - start:.0f} s", flush=True)
    cached = gen_trt_engine(exported.onnx_path, None, work / "model.int8-cached.onnx",
                            data_type="int8", cal_cache_file=cache)
    aps = {}
    for label, path in (("fp32", fp32), ("int8", int8), ("int8 from cache", cached)):
        metrics = evaluate(spec, path, None, output_dir=work / f"eval-{label.replace(' ', '-')}")
        aps[label] = metrics["AP"]
        aps[f"{label} AP50"] = metrics["AP50"]
    return aps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench/int8"))
    parser.add_argument("--bccd-epochs", type=int, default=12)
    parser.add_argument("--bccd-size", default="256,384", help="H,W (multiples of 128)")
    parser.add_argument("--only", choices=("demo", "bccd"), default=None)
    args = parser.parse_args()
    os.environ.setdefault("EFFDET_KEY", KEY)
    work = args.workdir.resolve()
    results = {}
    if args.only in (None, "demo"):
        demo = work / "demo"
        demo.mkdir(parents=True, exist_ok=True)
        spec = demo_spec(demo)
        cal = calibration_images(demo, demo / "raw" / "images",
                                 demo / "raw" / "annotations" / "train.json",
                                 CAL_BATCH_SIZE * CAL_BATCHES)
        results["demo"] = compare("demo", demo, spec, cal)
    if args.only in (None, "bccd"):
        bccd = work / "bccd"
        bccd.mkdir(parents=True, exist_ok=True)
        spec = bccd_spec(bccd, args.bccd_epochs, args.bccd_size)
        cal = calibration_images(bccd, ROOT / "data" / "bccd" / "images",
                                 ROOT / "data" / "bccd" / "train.json",
                                 CAL_BATCH_SIZE * CAL_BATCHES)
        results["bccd"] = compare("bccd", bccd, spec, cal)
    print(f"\n{'data':6} {'AP fp32':>8} {'AP int8':>8} {'cached':>8} {'diff':>7}  "
          f"{'AP50 fp32':>9} {'AP50 int8':>9}")
    for name, aps in results.items():
        drop = aps["fp32"] - aps["int8"]
        verdict = "PASS" if abs(drop) <= MAX_AP_DROP else "FAIL"
        print(f"{name:6} {aps['fp32']:8.4f} {aps['int8']:8.4f} {aps['int8 from cache']:8.4f} "
              f"{-drop * 100:+6.2f}pt  {aps['fp32 AP50']:9.4f} {aps['int8 AP50']:9.4f}  {verdict}")


if __name__ == "__main__":
    main()
