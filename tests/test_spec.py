"""Spec loader: TAO's files parse unchanged; every bad input is one line naming file, line, field."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from effdet.spec import SpecError, load_spec, parse_spec
from effdet.spec.config import ExperimentConfig
from effdet.spec.render import render_config
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "config" / "specs" / "tao_sample.txt"
TINY = ROOT / "config" / "specs" / "tiny.txt"


def parse(text: str, **kwargs) -> ExperimentConfig:
    return parse_spec(complete(text), **kwargs)


def test_tao_sample_spec_parses_with_its_values():
    config = load_spec(SAMPLE)
    assert config.training_config.train_batch_size == 16
    assert config.training_config.lr_warmup_init == pytest.approx(0.00005)
    assert config.training_config.moving_average_decay == 0.9999
    assert config.training_config.amp is True
    assert config.dataset_config.image_size == (512, 512)
    assert config.dataset_config.num_classes == 91
    assert config.eval_config.min_score_thresh == 0.4
    assert config.model_config.model_name == "efficientdet-d0"
    assert config.augmentation_config.random_crop_max_scale == 2.0


def test_tiny_spec_parses():
    config = load_spec(TINY)
    assert config.dataset_config.image_size == (128, 128)
    assert config.model_config.aspect_ratios == ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def test_omitted_fields_get_taos_effective_defaults_and_are_marked():
    config = parse("dataset_config { skip_crowd_during_training: true }\n")
    assert config.dataset_config.skip_crowd_during_training is True
    assert "dataset_config.skip_crowd_during_training" not in config.defaulted
    # proto3 zeros where TAO's loader has no fallback, its fallbacks elsewhere
    assert config.training_config.moving_average_decay == 0.0
    assert config.training_config.l2_weight_decay == 0.0
    assert config.augmentation_config.rand_hflip is False
    assert config.training_config.lr_warmup_epoch == 5.0
    assert config.training_config.clip_gradients_norm == 5.0
    assert config.dataset_config.max_instances_per_image == 100
    assert config.training_config.momentum == 0.9
    assert config.model_config.num_scales == 3
    assert config.model_config.anchor_scale == 4.0
    assert "dataset_config.max_instances_per_image" in config.defaulted
    assert "augmentation_config.rand_hflip" in config.defaulted
    listing = render_config(config)
    assert "(TAO default)" in listing
    assert not any("(TAO default)" in line for line in listing.splitlines()
                   if "skip_crowd_during_training" in line)


def test_explicit_zero_gets_taos_fallback_with_a_warning(caplog):
    # TAO: clip_gradients_norm=spec...clip_gradients_norm or 5.0 (utils/spec_loader.py:154)
    with caplog.at_level(logging.WARNING, logger="effdet"):
        config = parse("training_config { clip_gradients_norm: 0 lr_warmup_epoch: 0 }\n")
    assert config.training_config.clip_gradients_norm == 5.0
    assert config.training_config.lr_warmup_epoch == 5.0
    assert "training_config.clip_gradients_norm" in config.defaulted
    assert any("clip_gradients_norm is 0" in r.getMessage() for r in caplog.records)


def test_missing_required_fields_are_one_error_naming_them(tmp_path):
    spec = tmp_path / "short.txt"
    spec.write_text("training_config { learning_rate: 0.1 }\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(spec))
    assert "dataset_config.num_classes" in message and "model_config.model_name" in message
    assert "training_config.learning_rate" not in message
    one = complete("").replace("  learning_rate: 0.08\n", "")
    with pytest.raises(SpecError, match=r"missing required field training_config\.learning_rate "):
        parse_spec(one)


def test_config_is_frozen():
    config = parse("")
    assert isinstance(config, ExperimentConfig)
    with pytest.raises(AttributeError):
        config.training_config.learning_rate = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("text", ["512,512", "(512, 512)", "512x512", " 384 , 640 "])
def test_image_size_forms(text):
    config = parse(f'dataset_config {{ image_size: "{text}" }}')
    assert config.dataset_config.image_size in {(512, 512), (384, 640)}


def _error(text: str, tmp_path: Path, fill: bool = True) -> str:
    spec = tmp_path / "bad.txt"
    spec.write_text(complete(text) if fill else text)
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(spec))
    return message


def test_unknown_field_names_file_line_and_field(tmp_path):
    message = _error("training_config {\n  train_batch_size: 4\n  learning_rat: 0.1\n}\n", tmp_path)
    assert ":3:" in message and "learning_rat" in message and "training_config" in message


def test_wrong_type_names_file_line_and_field(tmp_path):
    message = _error("eval_config {\n  eval_batch_size: sixteen\n}\n", tmp_path)
    assert ":2:" in message and "eval_config.eval_batch_size" in message


def test_syntax_error_names_file_line(tmp_path):
    message = _error("model_config {\n  model_name: 'efficientdet-d0'\n\n", tmp_path, fill=False)
    assert ":2:" in message and 'expected "}"' in message
    message = _error("training_config {\n  train_batch_size 4\n}\n", tmp_path)
    assert ":2:" in message and "train_batch_size" in message


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        ("dataset_config {\n num_classes: 1\n}", "dataset_config.num_classes", 2),
        ('dataset_config {\n image_size: "500,512"\n}', "dataset_config.image_size", 2),
        ('dataset_config {\n image_size: "96,96"\n}', "dataset_config.image_size", 2),
        ('dataset_config {\n image_size: "big"\n}', "dataset_config.image_size", 2),
        ("training_config {\n train_batch_size: 0\n}", "training_config.train_batch_size", 2),
        ("training_config {\n checkpoint_period: 0\n}", "training_config.checkpoint_period", 2),
        ("training_config {\n moving_average_decay: 1.0\n}",
         "training_config.moving_average_decay", 2),
        ("training_config {\n lr_warmup_init: 0\n}", "training_config.lr_warmup_init", 2),
        ("training_config {\n num_epochs: 2\n}\neval_config {\n eval_epoch_cycle: 5\n}",
         "eval_config.eval_epoch_cycle", 5),
        ("augmentation_config {\n random_crop_min_scale: 3.0\n}",
         "augmentation_config.random_crop_min_scale", 2),
        ('model_config {\n aspect_ratios: "[(1.0, 1.0), (2.0,)]"\n}',
         "model_config.aspect_ratios", 2),
        ('model_config {\n aspect_ratios: "__import__(\'os\').system(\'true\')"\n}',
         "model_config.aspect_ratios", 2),
        ('model_config {\n model_name: "resnet50"\n}', "model_config.model_name", 2),
        ('training_config {\n skip_checkpoint_variables: "(unclosed"\n}',
         "training_config.skip_checkpoint_variables", 2),
    ],
)
def test_broken_rule_names_field_and_line(tmp_path, text, field, line):
    message = _error(text, tmp_path)
    assert f"'{field}'" in message and f":{line}:" in message


def test_aspect_ratios_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    text = f'model_config {{ aspect_ratios: "open(\'{marker}\', \'w\')" }}'
    with pytest.raises(SpecError):
        parse(text)
    assert not marker.exists()


def test_duplicate_field_warns_with_both_lines_and_last_wins(caplog):
    text = (
        "augmentation_config {\n"
        "  random_crop_min_scale: 0.1\n"
        "  random_crop_max_scale: 2.0\n"
        "  random_crop_min_scale: 0.5\n"
        "}\n"
    )
    with caplog.at_level(logging.WARNING, logger="effdet"):
        config = parse(text, source="dup.txt")
    assert config.augmentation_config.random_crop_min_scale == 0.5
    warnings = [r.getMessage() for r in caplog.records]
    assert any("augmentation_config.random_crop_min_scale" in w and "lines 2 and 4" in w
               for w in warnings)


def test_val_json_file_alias():
    config = parse('dataset_config { val_json_file: "a.json" }')
    assert config.dataset_config.validation_json_file == "a.json"
    same = parse('dataset_config { val_json_file: "a.json" validation_json_file: "a.json" }')
    assert same.dataset_config.validation_json_file == "a.json"
    with pytest.raises(SpecError, match="val_json_file"):
        parse('dataset_config { val_json_file: "a.json" validation_json_file: "b.json" }')


def test_model_name_in_training_config_accepted_and_must_agree(caplog):
    with caplog.at_level(logging.WARNING, logger="effdet"):
        config = parse("training_config { model_name: 'efficientdet_d1' }")
    assert config.model_config.model_name == "efficientdet-d1"
    assert any("training_config.model_name" in r.getMessage() for r in caplog.records)
    with pytest.raises(SpecError, match="disagrees"):
        parse("training_config { model_name: 'efficientdet-d1' }\n"
                   "model_config { model_name: 'efficientdet-d0' }")


def test_levels_forced_to_tao_values(caplog):
    with caplog.at_level(logging.WARNING, logger="effdet"):
        config = parse("model_config { min_level: 2 max_level: 6 }")
    assert (config.model_config.min_level, config.model_config.max_level) == (3, 7)
    assert len([r for r in caplog.records if "level" in r.getMessage()]) == 2
    d7x = parse("model_config { model_name: 'efficientdet-d7x' }")
    assert d7x.model_config.max_level == 8


def test_anchor_scale_defaults_from_the_variant():
    assert parse("model_config { model_name: 'efficientdet-d7' }").model_config.anchor_scale == 5.0
    assert parse("model_config { model_name: 'efficientdet-d3' }").model_config.anchor_scale == 4.0
    explicit = parse("model_config { model_name: 'efficientdet-d7' anchor_scale: 3 }")
    assert explicit.model_config.anchor_scale == 3.0
    assert "model_config.anchor_scale" not in explicit.defaulted


def test_spec_loading_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from effdet.spec import load_spec; load_spec(%r); "
            "print('tensorflow' in sys.modules)" % str(SAMPLE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_freeze_blocks_literal():
    config = parse('model_config { freeze_blocks: "[0, 1, 1]" freeze_bn: true }')
    assert config.model_config.freeze_blocks == (0, 1)
    assert config.model_config.freeze_bn is True


def test_generated_module_is_current():
    generate = pytest.importorskip("effdet.spec.generate")
    pytest.importorskip("grpc_tools")
    assert generate.GENERATED.read_text() == generate.generate_source()


def test_schema_keeps_tao_field_numbers():
    from effdet.spec import experiment_pb2 as pb

    numbers = {
        pb.Experiment: {"dataset_config": 1, "training_config": 2, "eval_config": 3,
                        "augmentation_config": 4, "model_config": 5},
        pb.DatasetConfig: {"training_file_pattern": 1, "validation_json_file": 3,
                           "image_size": 6, "skip_crowd_during_training": 9},
        pb.TrainingConfig: {"train_batch_size": 1, "checkpoint": 5, "tf_random_seed": 14,
                            "pruned_model_path": 22, "logging_frequency": 25},
        pb.EvalConfig: {"min_eval_interval": 1, "max_detections_per_image": 8},
        pb.AugConfig: {"rand_hflip": 1, "random_crop_max_scale": 3},
        pb.ModelConfig: {"model_name": 1, "freeze_blocks": 3, "num_scales": 8},
    }
    for message, expected in numbers.items():
        actual = {f.name: f.number for f in message.DESCRIPTOR.fields}
        for name, number in expected.items():
            assert actual[name] == number, (message.DESCRIPTOR.name, name)
    assert pb.Experiment.DESCRIPTOR.fields_by_name["augmentation_config"].message_type.name == "AugConfig"
