"""evaluate: a saved tiny model on synthetic shards → metrics.json equal to pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from effdet.anchors import anchors_for
from effdet.coco_metrics import METRIC_NAMES
from effdet.data.convert import dataset_convert
from effdet.data.pipeline import eval_dataset
from effdet.data.synthetic import make_dataset
from effdet.errors import EffdetError
from effdet.model.saving import Architecture, load_model, save_model
from effdet.model.variants import get_variant
from effdet.spec import load_spec
from effdet.spec.config import ModelConfig
from effdet.detector import make_detector
from effdet.data.records import read_examples
from effdet.runtimes.base import letterbox
from effdet.tasks.evaluate import (
    decode_rgb,
    detection_rows,
    evaluate,
    run_detection,
    yxyx_to_xywh,
)
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
KEY = "evaluate-test-Key-9"
TINY = {"fpn_num_filters": 16, "fpn_cell_repeats": 1, "box_class_repeats": 1,
        "width_coefficient": 0.25, "depth_coefficient": 0.25}


def tiny_architecture() -> Architecture:
    return Architecture(ModelConfig(), 5, (128, 128), get_variant("efficientdet-d0").replace(**TINY))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    data = make_dataset(root / "raw", num_images=10, width=160, height=120, seed=3,
                        val_fraction=0.3)
    dataset_convert(data.image_dir, data.val_json, root / "tfrecords", tag="val", num_shards=1,
                    workers=1)
    spec = root / "spec.txt"
    spec.write_text(complete(f"""
dataset_config {{
  num_classes: 5
  image_size: "128,128"
  validation_file_pattern: "{root / 'tfrecords'}/val-*"
  validation_json_file: "{data.val_json}"
}}
eval_config {{
  eval_batch_size: 2
  eval_samples: 3
  max_detections_per_image: 20
}}
"""))
    architecture = tiny_architecture()
    model_path = root / "model" / "m.tlt"
    model_path.parent.mkdir()
    keras_model = architecture.build()
    save_model(model_path, KEY, architecture, keras_model, manifest={"epoch": 7})
    return {"root": root, "spec": spec, "model": model_path, "val_json": data.val_json}


def pycocotools_stats(gt_path: Path, rows: np.ndarray, image_ids: list[int]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(rows), iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats)
    stats[stats == -1] = np.nan
    return stats


def test_evaluate_writes_metrics_equal_to_pycocotools(workspace):
    out = workspace["root"] / "out"
    report = evaluate(workspace["spec"], workspace["model"], KEY, output_dir=out)
    written = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_NAMES) <= set(written)
    assert written["num_images"] == 3 and written["epoch"] == 7
    assert written["model_path"] == str(workspace["model"])
    assert set(written["per_class_AP"]) == {"circle", "square", "triangle", "diamond"}
    assert written["AP"] == report["AP"]

    # The same detections straight through pycocotools give the same twelve numbers.
    dataset = eval_dataset(load_spec(workspace["spec"]), batch_size=2, limit=3)
    loaded = load_model(workspace["model"], KEY)
    detections = run_detection(loaded.model, loaded.architecture, dataset, max_detections=20)
    assert detections.image_ids == [8, 9, 10]
    assert detections.rows.shape == (60, 7)  # no score floor: always the maximum per image
    expected = pycocotools_stats(workspace["val_json"], detections.rows, detections.image_ids)
    got = np.array([np.nan if written[n] is None else written[n] for n in METRIC_NAMES])
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_exported_models_are_evaluated_on_the_pipelines_pixels(workspace):
    """`evaluate` of an .onnx/.etlt prepares the validation images through the runtime; they
    must be the pixels the .tlt's evaluation pipeline sees, or a model and its export score
    differently (PIL's JPEG decoder differs from TensorFlow's by a few levels)."""
    config = load_spec(workspace["spec"])
    images, _ = next(iter(eval_dataset(config, batch_size=3, limit=3)))
    examples = list(read_examples(config.dataset_config.validation_file_pattern))[:3]
    decoded = [decode_rgb(example["image"], example["filename"]) for example in examples]
    prepared = letterbox(decoded, (128, 128), (0.0, 0.0, 0.0), normalize=True).images
    np.testing.assert_allclose(prepared, images.numpy(), atol=1e-5)
    with pytest.raises(EffdetError, match=r"^x\.jpg: cannot decode the stored image \(jpeg") as error:
        decode_rgb(b"\xff\xd8\xff\xe0 truncated", "x.jpg")
    assert "\n" not in str(error.value) and "{{" not in str(error.value)


def test_wrong_key_is_one_line_error(workspace):
    with pytest.raises(EffdetError, match="wrong key") as error:
        evaluate(workspace["spec"], workspace["model"], "not-the-key")
    assert "\n" not in str(error.value)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("EFFDET_KEY", "EFFDET_DEBUG")}
    return subprocess.run([sys.executable, "-m", "effdet", *args], check=False,
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=180)


def test_cli_wrong_key_exits_1_without_showing_keys(workspace):
    result = run_cli("evaluate", "-e", str(workspace["spec"]), "-m", str(workspace["model"]),
                     "-k", "Wrong-Key-4")
    assert result.returncode == 1
    # TensorFlow's own start-up lines may precede it; the error itself is one line.
    assert result.stderr.strip().splitlines()[-1] == (
        f"effdet: error: {workspace['model']}: wrong key")
    assert "Traceback" not in result.stderr
    assert "Wrong-Key-4" not in result.stdout + result.stderr


def test_cli_evaluate_writes_metrics_json(workspace):
    out = workspace["root"] / "cli-out"
    result = run_cli("evaluate", "-e", str(workspace["spec"]), "-m", str(workspace["model"]),
                     "-k", KEY, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert set(METRIC_NAMES) <= set(json.loads((out / "metrics.json").read_text()))
    assert KEY not in result.stdout + result.stderr
    assert "AP   @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in result.stderr


class OneBoxModel:
    """Stands in for the network: one confident anchor/class, zero box codes (box = anchor)."""

    def __init__(self, architecture: Architecture, anchor: int, channel: int):
        anchors = anchors_for(architecture.model_config, architecture.image_size)
        classes, per_location = architecture.head_classes, anchors.anchors_per_location
        logits = np.full((anchors.boxes.shape[0], classes), -10.0, np.float32)
        logits[anchor, channel] = 10.0
        self.class_outputs, self.box_outputs, start = [], [], 0
        for level, count in zip(anchors.levels, anchors.level_counts()):
            h, w = anchors.level_shapes[level]
            self.class_outputs.append(logits[start:start + count].reshape(h, w, -1))
            self.box_outputs.append(np.zeros((h, w, per_location * 4), np.float32))
            start += count
        self.anchor_box = anchors.boxes[anchor]

    def __call__(self, images, training=False):
        batch = tf.shape(images)[0]

        def tile(x: np.ndarray) -> tf.Tensor:
            return tf.tile(tf.constant(x)[None], [batch, 1, 1, 1])

        return [tile(c) for c in self.class_outputs], [tile(b) for b in self.box_outputs]


def test_boxes_map_from_network_input_to_original_coco_xywh():
    architecture = tiny_architecture()
    fake = OneBoxModel(architecture, anchor=7 * 16 * 9 + 5 * 9 + 4, channel=2)
    detect = make_detector(fake, architecture, max_detections=5, min_score=0.5)
    # Resized to half its size: the 256 x 250 original became 128 x 125 (+ padding).
    outputs = detect(tf.zeros([1, 128, 128, 3]), tf.constant([0.5]), tf.constant([[256, 250]]))
    rows = detection_rows(np.array([42]), {k: v.numpy() for k, v in outputs.items()})
    ymin, xmin, ymax, xmax = fake.anchor_box * 2.0
    assert rows.shape == (1, 7)
    np.testing.assert_allclose(rows[0, :5], [42, xmin, ymin, xmax - xmin, ymax - ymin], atol=1e-3)
    assert rows[0, 6] == 3  # head channel 2 → category id 3


def test_yxyx_to_xywh():
    boxes = np.array([[[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.5, 2.5]]])
    np.testing.assert_array_equal(yxyx_to_xywh(boxes),
                                  [[[20.0, 10.0, 60.0, 40.0], [0.0, 0.0, 2.5, 1.5]]])
