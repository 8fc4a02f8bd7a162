"""convert_checkpoint: automl's COCO D0 (random weights, automl's names) -> .tlt -> evaluate,
export, ONNX Runtime; and fine-tuning it on a new class count with skip_checkpoint_variables."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset
from effdet.errors import EffdetError
from effdet.export.onnx_graph import INPUT_NAME
from effdet.formats.tlt import read_tlt
from effdet.model.saving import WEIGHTS, load_model, members_to_arrays
from effdet.tasks.convert_checkpoint import convert_checkpoint, parse_image_size
from effdet.tasks.evaluate import evaluate
from effdet.tasks.export import export
from effdet.tasks.train import train
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
KEY = "convert-test-Key-5"


def automl_d0_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    """automl's D0 names and shapes (the fixture) with random, well-behaved values."""
    variables = json.loads((DATA / "automl_efficientdet-d0_variables.json").read_text())
    rng = np.random.default_rng(0)
    values = {}
    for name, shape in variables["variables"]:
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            value = rng.uniform(0.8, 1.2, shape)
        elif leaf in ("beta", "moving_mean", "bias"):
            value = rng.normal(0, 0.05, shape)
        elif leaf.startswith("WSM"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0, np.sqrt(2.0 / max(1, np.prod(shape[:-1]))), shape)
        values[name] = value.astype(np.float32)
    names = sorted(values)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(values[n]) for n in names])
    return values


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("convert")
    automl_d0_checkpoint(root / "automl" / "model")
    data = make_dataset(root / "raw", 12, 128, 128, seed=4, val_fraction=0.25)
    dataset_convert(data.image_dir, data.train_json, root / "train", tag="train", num_shards=1)
    dataset_convert(data.image_dir, data.val_json, root / "val", tag="val", num_shards=1)
    env = {k: v for k, v in os.environ.items() if k not in ("EFFDET_KEY", "EFFDET_DEBUG")}
    converted = root / "d0_coco.tlt"
    result = subprocess.run(
        [sys.executable, "-m", "effdet", "convert_checkpoint", "-i", str(root / "automl"),
         "-o", str(converted), "-k", KEY, "--model_name", "efficientdet-d0",
         "--num_classes", "91", "--image_size", "128,128"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return {"root": root, "converted": converted, "log": result.stderr, "data": data}


def spec(root: Path, data, num_classes: int, training: str = "") -> Path:
    path = root / f"spec{num_classes}.txt"
    path.write_text(complete(textwrap.dedent(f"""\
        training_config {{
          train_batch_size: 2
          num_examples_per_epoch: 4
          num_epochs: 1
          learning_rate: 0.01
          lr_warmup_epoch: 1
          {training}
        }}
        dataset_config {{
          num_classes: {num_classes}
          image_size: "128,128"
          training_file_pattern: "{root}/train/train-*"
          validation_file_pattern: "{root}/val/val-*"
          validation_json_file: "{data.val_json}"
        }}
        eval_config {{
          eval_batch_size: 1 eval_samples: 2 eval_epoch_cycle: 1 eval_after_training: false
        }}
        """)))
    return path


def test_converted_automl_d0_evaluates_exports_and_runs_in_onnx_runtime(workspace):
    assert "loaded 676, skipped 0 (skip_checkpoint_variables), not in the source 0, unused " \
           "from the source 0" in workspace["log"]
    loaded = load_model(workspace["converted"], KEY)
    assert loaded.architecture.num_classes == 91 and loaded.architecture.image_size == (128, 128)
    assert loaded.manifest["classes"]["1"] == "person" and len(loaded.manifest["classes"]) == 80
    root = workspace["root"]
    metrics = evaluate(spec(root, workspace["data"], 91), workspace["converted"], KEY,
                       output_dir=root / "eval")
    assert "AP" in metrics
    result = export(workspace["converted"], spec(root, workspace["data"], 91),
                    root / "export" / "d0.etlt", KEY)
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(2).integers(0, 256, (1, *session.get_inputs()[0].shape[1:]))
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {INPUT_NAME: image.astype(np.float32)})))
    assert outputs["num_detections"].shape == (1, 1)
    assert np.isfinite(outputs["detection_scores"]).all()


def test_converted_model_fine_tunes_on_new_classes_skipping_the_heads(workspace, caplog):
    root, data = workspace["root"], workspace["data"]
    tuned_spec = spec(root, data, 5, training=f'checkpoint: "{workspace["converted"]}"')
    with pytest.raises(EffdetError, match='skip_checkpoint_variables: "class_net_predict"'):
        train(tuned_spec, root / "refused", KEY)
    # TAO's layer name for the class head, as a TAO spec would write it.
    tuned_spec = spec(root, data, 5, training=f'checkpoint: "{workspace["converted"]}" '
                                              'skip_checkpoint_variables: "class-predict"')
    with caplog.at_level(logging.INFO, logger="effdet"):
        train(tuned_spec, root / "tuned", KEY)
    assert any("loaded 673, skipped 3 (skip_checkpoint_variables)" in r.getMessage()
               for r in caplog.records)
    tuned = members_to_arrays(WEIGHTS, read_tlt(root / "tuned" / "model.tlt", KEY).members)
    assert tuned["class_net_predict/bias"].shape == (9 * 4,)


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(EffdetError, match="--image_size"):
        parse_image_size("512x")
    with pytest.raises(EffdetError, match="no such weights file"):
        convert_checkpoint(tmp_path / "none", tmp_path / "o.tlt", KEY, "efficientdet-d0", 91,
                           (128, 128))
    with pytest.raises(EffdetError, match="unknown model_name"):
        convert_checkpoint(tmp_path / "none", tmp_path / "o.tlt", KEY, "efficientdet-d9", 91)
