"""TAO's six shipped specs resolve to the configuration TAO's own spec loader derives.

The specs are copied into tests/data/tao_specs/ (source and commit in SOURCE.md there). The
expected values below are written from TAO's source, not from effdet: each names the TAO file
and line it comes from. Paths are relative to nvidia_tao_tf1/cv/efficientdet/ in
github.com/NVIDIA/tao_tensorflow1_backend at 2ec95cbbe0d74d6a180ea6e989f64d2d97d97712;
"proto3 zero" means TAO's loader passes the field through (or never reads it), so an omitted
field is the proto3 default in the named .proto.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from effdet.anchors import anchors_for
from effdet.spec import SpecError, load_spec, parse_spec, path_warnings
from tests.spec_support import complete
from tests.test_cli import run_cli

SPECS = Path(__file__).resolve().parent / "data" / "tao_specs"
LOADER = "utils/spec_loader.py"
TRAINING_PROTO = "proto/training_config.proto (proto3 zero)"
DATASET_PROTO = "proto/dataset_config.proto (proto3 zero)"
EVAL_PROTO = "proto/eval_config.proto (proto3 zero)"
AUG_PROTO = "proto/aug_config.proto (proto3 zero)"
MODEL_PROTO = "proto/model_config.proto (proto3 zero)"

# What TAO resolves an omitted field to.
TAO_DEFAULTS: dict[str, tuple[object, str]] = {
    "dataset_config.testdev_dir": ("", f"{LOADER}:121, {DATASET_PROTO}"),
    "dataset_config.use_fake_data": (False, f"scripts/train.py:79, {DATASET_PROTO}"),
    "dataset_config.max_instances_per_image": (100, f"{LOADER}:123 (or 100)"),
    "dataset_config.skip_crowd_during_training": (False, f"{LOADER}:124, {DATASET_PROTO}"),
    "training_config.iterations_per_loop": (10, "never read by TAO's trainer; effdet's own"),
    "training_config.use_xla": (False, TRAINING_PROTO),
    "training_config.disable_logging": (False, TRAINING_PROTO),
    "training_config.checkpoint": ("", f"{LOADER}:135, {TRAINING_PROTO}"),
    "training_config.stop_at_epoch": (0, f"{LOADER}:142, {TRAINING_PROTO}"),
    "training_config.resume": (False, TRAINING_PROTO),
    "training_config.keep_checkpoint_max": (0, TRAINING_PROTO),
    "training_config.skip_checkpoint_variables": ("", f"{LOADER}:155, {TRAINING_PROTO}"),
    "training_config.profile_skip_steps": (0, f"{LOADER}:143, {TRAINING_PROTO}"),
    "training_config.tf_random_seed": (42, f"{LOADER}:145 (or 42)"),
    "training_config.moving_average_decay": (0.0, f"{LOADER}:147, {TRAINING_PROTO}"),
    "training_config.lr_warmup_epoch": (5.0, f"{LOADER}:148 (or 5)"),
    "training_config.amp": (False, f"{LOADER}:150, {TRAINING_PROTO}"),
    "training_config.l2_weight_decay": (0.0, f"{LOADER}:152, {TRAINING_PROTO}"),
    "training_config.l1_weight_decay": (0.0, f"{LOADER}:153, {TRAINING_PROTO}"),
    "training_config.pruned_model_path": ("", f"{LOADER}:146, {TRAINING_PROTO}"),
    "training_config.clip_gradients_norm": (5.0, f"{LOADER}:154 (or 5.0)"),
    "training_config.momentum": (0.9, f"{LOADER}:132 (or 0.9)"),
    "training_config.logging_frequency": (10, f"{LOADER}:158 (or 10)"),
    "eval_config.min_eval_interval": (0, EVAL_PROTO),
    "eval_config.eval_timeout": (0, EVAL_PROTO),
    "eval_config.eval_after_training": (False, EVAL_PROTO),
    "eval_config.min_score_thresh": (0.4, "scripts/export.py:160 (or 0.4)"),
    "eval_config.max_detections_per_image": (100, "scripts/export.py:161, "
                                                  "scripts/inference.py:129 (or 100)"),
    "augmentation_config.rand_hflip": (False, f"{LOADER}:128, {AUG_PROTO}"),
    "augmentation_config.random_crop_min_scale": (0.1, f"{LOADER}:129 (or 0.1)"),
    "augmentation_config.random_crop_max_scale": (2.0, f"{LOADER}:130 (or 2.0)"),
    "model_config.freeze_bn": (False, f"{LOADER}:116, {MODEL_PROTO}"),
    "model_config.freeze_blocks": ((), f"{LOADER}:117-118 (None: no block)"),
    "model_config.aspect_ratios": (((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)), f"{LOADER}:103"),
    "model_config.anchor_scale": (4.0, f"{LOADER}:112 (or 4)"),
    "model_config.min_level": (3, f"{LOADER}:113 (forced)"),
    "model_config.max_level": (7, f"{LOADER}:114 (forced)"),
    "model_config.num_scales": (3, f"{LOADER}:115 (or 3)"),
}

# image_size "512, 512" is "H, W" in TAO's utils/utils.py:466-469 parse_image_size.
DEFAULT_TXT: dict[str, tuple[object, str]] = {
    "training_config.train_batch_size": (16, "default.txt:2"),
    "training_config.iterations_per_loop": (1, "default.txt:3"),
    "training_config.use_xla": (False, "default.txt:4"),
    "training_config.disable_logging": (False, "default.txt:5"),
    "training_config.stop_at_epoch": (100, "default.txt:6"),
    "training_config.resume": (False, "default.txt:7"),
    "training_config.checkpoint_period": (10, "default.txt:8"),
    "training_config.lr_warmup_init": (0.00005, "default.txt:9"),
    "training_config.learning_rate": (0.1, "default.txt:10"),
    "training_config.keep_checkpoint_max": (10, "default.txt:11"),
    "training_config.num_examples_per_epoch": (14700, "default.txt:12"),
    "training_config.num_epochs": (100, "default.txt:13"),
    "training_config.profile_skip_steps": (100, "default.txt:14"),
    "training_config.tf_random_seed": (42, "default.txt:15"),
    "dataset_config.num_classes": (91, "default.txt:18"),
    "dataset_config.image_size": ((512, 512), "default.txt:19, utils/utils.py:466-469"),
    "dataset_config.training_file_pattern": ("/home/iva_2000/dataset/coco/train-*",
                                             "default.txt:20"),
    "dataset_config.validation_file_pattern": ("/home/iva_2000/dataset/coco/val-*",
                                               "default.txt:21"),
    "dataset_config.validation_json_file": (
        "/home/iva_2000/dataset/coco/annotations/instances_val2017.json", "default.txt:22"),
    "eval_config.eval_batch_size": (16, "default.txt:25"),
    "eval_config.eval_epoch_cycle": (20, "default.txt:26"),
    "eval_config.eval_after_training": (True, "default.txt:27"),
    "eval_config.eval_samples": (5, "default.txt:28"),
    # set twice (lines 31 and 32): text_format.Merge keeps the last, spec_loader.py:57
    "augmentation_config.random_crop_min_scale": (2.0, "default.txt:32"),
    "augmentation_config.rand_hflip": (True, "default.txt:33"),
    "model_config.model_name": ("efficientdet-d0", "default.txt:36"),
}


def d_txt(name: str, batch: int) -> dict[str, tuple[object, str]]:
    """d1.txt … d5.txt have the same lines; only the batch size and the model differ."""
    f = f"{name}.txt"
    return {
        "training_config.train_batch_size": (batch, f"{f}:2"),
        "training_config.iterations_per_loop": (2, f"{f}:3"),
        "training_config.use_xla": (False, f"{f}:4"),
        "training_config.disable_logging": (False, f"{f}:5"),
        # line 6 "# stop_at_epoch: 300" is a comment: the proto3 zero stays
        "training_config.resume": (False, f"{f}:7"),
        "training_config.checkpoint_period": (10, f"{f}:8"),
        "training_config.keep_checkpoint_max": (10, f"{f}:9"),
        "training_config.num_examples_per_epoch": (14700, f"{f}:10"),
        "training_config.num_epochs": (300, f"{f}:11"),
        "training_config.profile_skip_steps": (100, f"{f}:12 and 18"),
        "training_config.tf_random_seed": (42, f"{f}:13"),
        "training_config.lr_warmup_epoch": (5.0, f"{f}:14"),
        "training_config.lr_warmup_init": (0.00005, f"{f}:15"),
        "training_config.learning_rate": (0.1, f"{f}:16"),
        "training_config.amp": (True, f"{f}:17"),
        "training_config.moving_average_decay": (0.9999, f"{f}:19"),
        # line 20 "# l2_weight_decay: 0.000001" is a comment: the proto3 zero stays
        "dataset_config.num_classes": (91, f"{f}:23"),
        "dataset_config.image_size": ((512, 512), f"{f}:24, utils/utils.py:466-469"),
        "dataset_config.training_file_pattern": ("/home/iva_2000/dataset/coco/train-*", f"{f}:25"),
        "dataset_config.validation_file_pattern": ("/home/iva_2000/dataset/coco/val-*",
                                                   f"{f}:26"),
        "dataset_config.validation_json_file": (
            "/home/iva_2000/dataset/coco/annotations/instances_val2017.json", f"{f}:27"),
        "eval_config.eval_batch_size": (16, f"{f}:30"),
        "eval_config.eval_epoch_cycle": (10, f"{f}:31"),
        "eval_config.eval_after_training": (True, f"{f}:32"),
        "eval_config.eval_samples": (5000, f"{f}:33"),
        "augmentation_config.random_crop_min_scale": (2.0, f"{f}:37 (last of 36, 37)"),
        "augmentation_config.rand_hflip": (True, f"{f}:38"),
        "model_config.model_name": (f"efficientdet-{name}", f"{f}:41"),
    }


SPEC_VALUES = {
    "default": DEFAULT_TXT,
    "d1": d_txt("d1", 12),
    "d2": d_txt("d2", 12),
    "d3": d_txt("d3", 8),
    "d4": d_txt("d4", 6),
    "d5": d_txt("d5", 4),
}


def resolved_fields(config) -> dict[str, object]:
    flat = {}
    for section in config.to_dict():
        for name, value in vars(getattr(config, section)).items():
            flat[f"{section}.{name}"] = value
    return flat


@pytest.mark.parametrize("name", SPEC_VALUES)
def test_tao_spec_resolves_field_by_field_as_taos_loader(name):
    expected = {**TAO_DEFAULTS, **SPEC_VALUES[name]}
    config = load_spec(SPECS / f"{name}.txt")
    resolved = resolved_fields(config)
    assert resolved.keys() == expected.keys()  # every field has a TAO source
    wrong = {field: (resolved[field], value, source)
             for field, (value, source) in expected.items() if resolved[field] != value}
    assert not wrong, wrong
    # The fields the spec leaves out, and only those, are reported as defaults.
    assert config.defaulted == set(expected) - set(SPEC_VALUES[name])


def test_missing_data_paths_only_warn():
    config = load_spec(SPECS / "default.txt")
    problems = path_warnings(config)
    assert len(problems) == 3 and all("/home/iva_2000/" in p for p in problems)
    result = run_cli("spec", str(SPECS / "d3.txt"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("/home/iva_2000/") == 3 and "error" not in result.stderr
    assert '"efficientdet-d3"' in result.stdout and "(TAO default)" in result.stdout


def test_image_size_wxh_is_width_by_height_and_h_comma_w_stays():
    # TAO's utils/utils.py:463-469: "WxH" -> (H, W); "H,W" -> (H, W)
    wxh = parse_spec(complete('dataset_config { image_size: "640x384" }'))
    assert wxh.dataset_config.image_size == (384, 640)
    hw = parse_spec(complete('dataset_config { image_size: "384,640" }'))
    assert hw.dataset_config.image_size == (384, 640)


@pytest.mark.parametrize("scale", ["4.0", "1.5"])
def test_float_anchor_scale_parses_and_builds_anchors(scale):
    # proto/model_config.proto:11: float anchor_scale = 5
    config = parse_spec(complete(f'dataset_config {{ image_size: "640x384" }}\n'
                                 f"model_config {{ anchor_scale: {scale} }}"))
    assert config.model_config.anchor_scale == float(scale)
    anchors = anchors_for(config.model_config, config.dataset_config.image_size)
    assert anchors.image_size == (384, 640) and anchors.level_shapes[3] == (48, 80)
    half = float(scale) * 8 / 2  # level 3: stride 8, first octave, aspect (1, 1), centre (4, 4)
    np.testing.assert_allclose(anchors.boxes[0], [4 - half, 4 - half, 4 + half, 4 + half])


@pytest.mark.parametrize(("text", "field"), [
    ("training_config { learning_rate: inf }", "training_config.learning_rate"),
    ("training_config { learning_rate: nan }", "training_config.learning_rate"),
    ("training_config { lr_warmup_epoch: -inf }", "training_config.lr_warmup_epoch"),
    ('dataset_config { image_size: "8192,8192" }', "dataset_config.image_size"),
    ('dataset_config { image_size: "99999999999x512" }', "dataset_config.image_size"),
])
def test_out_of_range_values_are_one_line_errors_at_load_time(tmp_path, text, field):
    spec = tmp_path / "bad.txt"
    spec.write_text(complete(text))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    message = str(info.value)
    assert "\n" not in message and f"field '{field}'" in message and ":1:" in message


def test_a_long_value_is_echoed_as_a_short_prefix():
    junk = "7" * 10_000
    with pytest.raises(SpecError) as info:
        parse_spec(complete(f'dataset_config {{ image_size: "{junk}" }}'))
    assert len(str(info.value)) < 200 and "7" * 40 + "…" in str(info.value)


def test_a_long_unparsable_value_is_echoed_short(tmp_path):
    spec = tmp_path / "bad.txt"
    spec.write_text(complete("training_config { train_batch_size: " + "x" * 10_000 + " }"))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    message = str(info.value)
    assert len(message) < len(str(spec)) + 200 and "couldn't parse integer: xxx" in message.lower()
    assert message.endswith("…")
