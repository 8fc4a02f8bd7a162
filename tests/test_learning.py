"""Learning is real: a short CPU training on generated shapes reaches AP50 >= 0.5."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from effdet.data.convert import dataset_convert
from effdet.data.synthetic import make_dataset
from effdet.model.variants import get_variant
from effdet.tasks.train import train
from tests.spec_support import complete

KEY = "learning-test-key"
REPO = Path(__file__).resolve().parents[1]
# Narrower than D0 so that 600 steps fit in a couple of CPU minutes; the architecture is D0's.
# The schedule spans 150 epochs and stop_at_epoch ends the run at 75 while the learning rate is
# still high: on this tiny problem that is where a short run does best (AP50 ~0.58).
SMALL = get_variant("efficientdet-d0").replace(fpn_num_filters=32, fpn_cell_repeats=2,
                                               box_class_repeats=2, width_coefficient=0.5,
                                               depth_coefficient=0.5)


def test_short_training_reaches_ap50_half_by_effdet_evaluate(tmp_path):
    summary = make_dataset(tmp_path / "raw", 80, 128, 128, seed=1, val_fraction=0.2)
    dataset_convert(summary.image_dir, summary.train_json, tmp_path / "train", tag="train",
                    num_shards=2)
    dataset_convert(summary.image_dir, summary.val_json, tmp_path / "val", tag="val", num_shards=1)
    spec = tmp_path / "spec.txt"
    spec.write_text(complete(f"""
training_config {{
  l2_weight_decay: 0.00004 clip_gradients_norm: 10
  train_batch_size: 8 iterations_per_loop: 4 checkpoint_period: 75 num_examples_per_epoch: 64
  num_epochs: 150 stop_at_epoch: 75 lr_warmup_epoch: 1 lr_warmup_init: 0.01 learning_rate: 0.08
  moving_average_decay: 0.99 logging_frequency: 64
}}
dataset_config {{
  num_classes: 5 image_size: "128,128" max_instances_per_image: 10
  training_file_pattern: "{tmp_path}/train/train-*"
  validation_file_pattern: "{tmp_path}/val/val-*"
  validation_json_file: "{summary.val_json}"
}}
eval_config {{ eval_batch_size: 8 eval_epoch_cycle: 150 eval_samples: 16 eval_after_training: false }}
augmentation_config {{ rand_hflip: true random_crop_min_scale: 0.8 random_crop_max_scale: 1.2 }}
"""))
    train(spec, tmp_path / "model", KEY, variant=SMALL)
    metrics = evaluate_cli(spec, tmp_path / "model" / "model.tlt", tmp_path / "eval")
    assert metrics["AP50"] >= 0.5, metrics

    # The exported model keeps the accuracy: within half an AP point (issue 5).
    effdet_cli("export", "-m", str(tmp_path / "model" / "model.tlt"), "-e", str(spec),
               "-o", str(tmp_path / "export" / "model.etlt"))
    for exported in ("model.onnx", "model.etlt"):
        deployed = evaluate_cli(spec, tmp_path / "export" / exported, tmp_path / exported)
        assert abs(deployed["AP"] - metrics["AP"]) <= 0.005, (exported, deployed["AP"], metrics["AP"])
        assert deployed["AP50"] >= 0.5, (exported, deployed)


def effdet_cli(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "effdet", *args], capture_output=True, text=True, cwd=REPO,
        timeout=300, env={"PATH": "/usr/bin:/bin", "EFFDET_KEY": KEY, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert KEY not in result.stderr + result.stdout


def evaluate_cli(spec: Path, model: Path, output_dir: Path) -> dict:
    effdet_cli("evaluate", "-e", str(spec), "-m", str(model), "-o", str(output_dir))
    return json.loads((output_dir / "metrics.json").read_text())
