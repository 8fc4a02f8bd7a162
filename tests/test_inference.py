"""inference: a folder of mixed images through a tiny .tlt → annotated images + KITTI labels."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_runtimes import KEY, save_tiny_tlt

from effdet.errors import EffdetError
from effdet.formats.kitti import format_kitti_line
from effdet.tasks.inference import inference, read_label_map
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
KITTI = re.compile(r"^(\S+) 0\.00 0 0\.00 (\d+\.\d\d) (\d+\.\d\d) (\d+\.\d\d) (\d+\.\d\d) "
                   r"0\.00 0\.00 0\.00 0\.00 0\.00 0\.00 0\.00 (\d\.\d{4})$")
SIZES = {"a.jpg": (160, 120), "b.png": (90, 200), "c_gray.png": (64, 64),
         "d_gray.jpg": (300, 100)}  # name → (width, height)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inference")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name, (width, height) in SIZES.items():
        mode = "L" if "gray" in name else "RGB"
        shape = (height, width) if mode == "L" else (height, width, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(images / name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (images / "notes.txt").write_text("not an image, not looked at")
    spec = root / "spec.txt"
    spec.write_text(complete('dataset_config { num_classes: 5 image_size: "128,128" }\n'
                             "eval_config { min_score_thresh: 0.9 max_detections_per_image: 20 }\n"))
    save_tiny_tlt(root / "m.tlt")
    return {"root": root, "images": images, "spec": spec, "model": root / "m.tlt"}


def read_labels(label_dir: Path, stem: str) -> list[tuple[str, list[float], float]]:
    rows = []
    for line in (label_dir / f"{stem}.txt").read_text().splitlines():
        match = KITTI.match(line)
        assert match, line
        rows.append((match[1], [float(match[i]) for i in range(2, 6)], float(match[6])))
    return rows


def test_inference_writes_annotated_images_and_kitti_labels(workspace, caplog):
    out, labels = workspace["root"] / "out", workspace["root"] / "labels"
    with caplog.at_level(logging.WARNING, logger="effdet"):
        summary = inference(workspace["images"], out, workspace["spec"], workspace["model"],
                            KEY, label_dir=labels, threshold=0.3, batch_size=3)
    assert summary.images == 4 and summary.skipped == [workspace["images"] / "broken.jpg"]
    assert any("broken.jpg" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert sorted(p.name for p in out.iterdir()) == sorted(SIZES)
    assert sorted(p.name for p in labels.iterdir()) == sorted(f"{Path(n).stem}.txt"
                                                               for n in SIZES)
    total = 0
    for name, (width, height) in SIZES.items():
        with Image.open(out / name) as annotated, Image.open(workspace["images"] / name) as raw:
            assert annotated.format == raw.format and annotated.size == (width, height)
            changed = np.any(np.asarray(annotated.convert("RGB"), np.int16)
                             != np.asarray(raw.convert("RGB"), np.int16))
        rows = read_labels(labels, Path(name).stem)
        total += len(rows)
        assert changed == bool(rows)
        for label, (x1, y1, x2, y2), score in rows:
            # Names from the model's manifest; the space in "red circle" becomes "_".
            assert label in {"red_circle", "square", "triangle", "diamond"}
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert score >= 0.3
    assert total == summary.detections > 0


def test_label_map_and_default_threshold(workspace):
    label_map = workspace["root"] / "labels.txt"
    label_map.write_text("car\ntruck\nbig bus\nbike\n")
    labels = workspace["root"] / "labels-map"
    low = workspace["root"] / "labels-low"
    inference(workspace["images"], workspace["root"] / "out-map", workspace["spec"],
              workspace["model"], KEY, label_dir=labels, label_map=label_map)
    inference(workspace["images"], workspace["root"] / "out-low", workspace["spec"],
              workspace["model"], KEY, label_dir=low, threshold=0.3)
    kept = dropped = 0
    for name in SIZES:
        rows = read_labels(labels, Path(name).stem)
        assert {label for label, _, _ in rows} <= {"car", "truck", "big_bus", "bike"}
        # The spec's min_score_thresh (0.9) is the default threshold.
        assert all(score >= 0.9 for _, _, score in rows)
        kept += len(rows)
        dropped += len(read_labels(low, Path(name).stem)) - len(rows)
    assert kept > 0 and dropped > 0


def test_output_must_not_overwrite_the_inputs(workspace):
    with pytest.raises(EffdetError, match="must differ from the input"):
        inference(workspace["images"], workspace["images"] / ".", workspace["spec"],
                  workspace["model"], KEY)


def test_read_label_map(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("cat\n\ndog \n")
    assert read_label_map(path) == {1: "cat", 3: "dog"}
    with pytest.raises(EffdetError, match="label map not found"):
        read_label_map(tmp_path / "missing.txt")


def test_format_kitti_line():
    assert format_kitti_line("traffic light", 1.234, 5, 60.5, 70.499, 0.87654) == (
        "traffic_light 0.00 0 0.00 1.23 5.00 60.50 70.50 "
        "0.00 0.00 0.00 0.00 0.00 0.00 0.00 0.8765")


def test_cli_inference(workspace):
    out = workspace["root"] / "cli-out"
    env = {k: v for k, v in os.environ.items() if k not in ("EFFDET_KEY", "EFFDET_DEBUG")}
    result = subprocess.run(
        [sys.executable, "-m", "effdet", "inference", "-i", str(workspace["images"]),
         "-o", str(out), "-e", str(workspace["spec"]), "-m", str(workspace["model"]),
         "-k", KEY, "-t", "0.5", "--batch_size", "2", "-l", str(workspace["root"] / "cli-l")],
        check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(SIZES)
    assert "broken.jpg" in result.stderr and "inference:" in result.stderr  # warning, bar
    assert KEY not in result.stdout + result.stderr
    for name in SIZES:
        assert all(score >= 0.5 for *_, score in read_labels(workspace["root"] / "cli-l",
                                                             Path(name).stem))
