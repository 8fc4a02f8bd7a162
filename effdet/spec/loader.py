"""Spec file (TAO prototxt) → one frozen, fully resolved `ExperimentConfig`.

Rules live here and nowhere else: defaults are the dataclass defaults in `config.py`, every
constraint is checked with an error naming the field and the rule, and values that look like
Python literals (`aspect_ratios`, `freeze_blocks`) are read with `ast.literal_eval`, which
parses literals only and never runs code.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

from effdet.errors import EffdetError
from effdet.model.variants import get_variant
from effdet.spec import experiment_pb2
from effdet.spec.config import (
    AugmentationConfig,
    DatasetConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    TrainingConfig,
)
from effdet.spec.textscan import FieldSite, field_at, scan_fields

log = logging.getLogger("effdet")

SECTIONS: dict[str, type] = {
    "dataset_config": DatasetConfig,
    "training_config": TrainingConfig,
    "eval_config": EvalConfig,
    "augmentation_config": AugmentationConfig,
    "model_config": ModelConfig,
}

# Accepted because TAO accepts them, but they change nothing here (TAO ignores them too, or
# they only steer TPU/estimator machinery that does not exist in this implementation).
NO_EFFECT_FIELDS = frozenset(
    {
        "dataset_config.testdev_dir",
        "dataset_config.use_fake_data",
        "eval_config.min_eval_interval",
        "eval_config.eval_timeout",
        # A rerun always continues from the newest checkpoint in the model directory.
        "training_config.resume",
    }
)

# TAO's utils.parse_image_size: "H,W" (optionally parenthesised here) or "WxH".
IMAGE_SIZE_HW = re.compile(r"^\(?\s*(\d+)\s*,\s*(\d+)\s*\)?$")
IMAGE_SIZE_WXH = re.compile(r"^(\d+)\s*[xX]\s*(\d+)$")
# Larger sides are a typo or an attempt to exhaust memory, not a detector input.
MAX_IMAGE_SIDE = 4096
# Values echoed in errors are cut to this many characters.
ECHO_LIMIT = 40

# Fields TAO reads as `spec.x or fallback` (utils/spec_loader.py:107-158, scripts/export.py:160-161):
# proto3 cannot tell an explicit 0 from an omitted field, so a 0 there gets TAO's fallback.
ZERO_MEANS_DEFAULT = frozenset(
    {
        "dataset_config.max_instances_per_image",
        "training_config.momentum",
        "training_config.tf_random_seed",
        "training_config.lr_warmup_epoch",
        "training_config.clip_gradients_norm",
        "training_config.logging_frequency",
        "eval_config.min_score_thresh",
        "eval_config.max_detections_per_image",
        "augmentation_config.random_crop_min_scale",
        "augmentation_config.random_crop_max_scale",
        "model_config.anchor_scale",
        "model_config.num_scales",
    }
)

# Fields TAO's spec_checker (utils/spec_loader.py:162-206) asserts on, so that TAO refuses a
# spec without them; proto3 gives them 0 or "" there, which fails its checks.
REQUIRED_FIELDS = (
    "dataset_config.training_file_pattern",
    "dataset_config.validation_file_pattern",
    "dataset_config.validation_json_file",
    "dataset_config.num_classes",
    "dataset_config.image_size",
    "training_config.train_batch_size",
    "training_config.checkpoint_period",
    "training_config.num_examples_per_epoch",
    "training_config.num_epochs",
    "training_config.lr_warmup_init",
    "training_config.learning_rate",
    "eval_config.eval_batch_size",
    "eval_config.eval_epoch_cycle",
    "eval_config.eval_samples",
    "model_config.model_name",
)


class SpecError(EffdetError):
    """The spec file cannot be read, parsed or validated."""


def load_spec(path: str | Path) -> ExperimentConfig:
    """Parse, default-fill and validate a spec file; raise SpecError with file, line, field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc})") from None
    return parse_spec(text, source=str(path))


def parse_spec(text: str, source: str = "<spec>") -> ExperimentConfig:
    sites = scan_fields(text)
    message = _parse_proto(text, source, sites)
    _warn_duplicates(sites, source)
    return _Resolver(message, source, sites).resolve()


def _parse_proto(text: str, source: str, sites: list[FieldSite]) -> experiment_pb2.Experiment:
    message = experiment_pb2.Experiment()
    try:
        # Merge, not Parse: TAO's own sample specs set a singular field twice; last one wins.
        text_format.Merge(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine() or 0, exc.GetColumn() or 0
        detail = re.sub(r"^\d+:\d+ : ", "", str(exc))
        unknown = re.search(r'Message type "effdet\.spec\.(\w+)" has no field named "(\w+)"', detail)
        if unknown:
            where = _section_of_message(unknown.group(1))
            detail = f"unknown field '{_short(unknown.group(2))}'" + (f" in {where}" if where else "")
            raise SpecError(f"{source}:{line}: {detail}") from None
        site = field_at(sites, line, column)
        field_name = f" field '{site.dotted}':" if site else ""
        raise SpecError(f"{source}:{line}:{field_name} {_plain_parse_detail(detail)}") from None
    return message


def _plain_parse_detail(detail: str) -> str:
    detail = detail.replace('"effdet.spec.', '"')
    if detail.startswith("'") and "': " in detail:  # protobuf quotes the whole line first
        line, reason = detail[1:].rsplit("': ", 1)
        detail = f"'{_short(line.strip())}': {_short(reason, 2 * ECHO_LIMIT)}"
    else:
        detail = _short(detail, 2 * ECHO_LIMIT)
    return detail[0].lower() + detail[1:] if detail else "syntax error"


def _section_of_message(message_type: str) -> str:
    for field in experiment_pb2.Experiment.DESCRIPTOR.fields:
        if field.message_type.name == message_type:
            return field.name
    return "" if message_type == "Experiment" else message_type


def _warn_duplicates(sites: list[FieldSite], source: str) -> None:
    seen: dict[tuple[str, ...], FieldSite] = {}
    for site in sites:
        if site.is_message:
            continue
        earlier = seen.get(site.path)
        if earlier is not None:
            log.warning(
                "%s: field '%s' is set twice (lines %d and %d); the last value (line %d) is used",
                source, site.dotted, earlier.line, site.line, site.line,
            )
        seen[site.path] = site


class _Resolver:
    """Turns the parsed message into the dataclasses, one checked field at a time."""

    def __init__(self, message: experiment_pb2.Experiment, source: str, sites: list[FieldSite]):
        self.message = message
        self.source = source
        self.lines = {site.path: site.line for site in sites if not site.is_message}
        self.defaulted: set[str] = set()

    def check_required(self, sections: dict[str, Any]) -> None:
        """TAO asserts these are non-empty, so an explicit "" is as missing as an omission."""
        missing = [name for name in REQUIRED_FIELDS if name in self.defaulted
                   or getattr(sections[name.split(".")[0]], name.split(".")[1]) == ""]
        if missing:
            raise SpecError(f"{self.source}: missing required field{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (TAO requires them too)")

    def fail(self, dotted: str, rule: str) -> SpecError:
        line = self.lines.get(tuple(dotted.split(".")))
        where = f"{self.source}:{line}" if line else self.source
        return SpecError(f"{where}: field '{dotted}': {rule}")

    def raw(self, section: str) -> dict[str, Any]:
        """Values the spec sets explicitly in one section (a 0 TAO replaces is left out)."""
        sub: Message = getattr(self.message, section)
        values = {f.name: getattr(sub, f.name) for f in sub.DESCRIPTOR.fields if sub.HasField(f.name)}
        for name, value in list(values.items()):
            dotted = f"{section}.{name}"
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(dotted, f"must be a finite number (got {value})")
            if dotted in ZERO_MEANS_DEFAULT and value == 0:
                log.warning("%s: %s is 0, which TAO replaces by its default; so does effdet",
                            self.source, dotted)
                del values[name]
        return values

    def build(self, section: str, values: dict[str, Any]) -> Any:
        cls = SECTIONS[section]
        names = {f.name for f in fields(cls)}
        for name in names - values.keys():
            self.defaulted.add(f"{section}.{name}")
        for name in values.keys() & names:
            if f"{section}.{name}" in NO_EFFECT_FIELDS:
                log.info("%s: %s.%s is accepted for TAO compatibility but has no effect",
                         self.source, section, name)
        return cls(**{k: v for k, v in values.items() if k in names})

    def resolve(self) -> ExperimentConfig:
        dataset = self.build("dataset_config", self.dataset_values())
        model = self.build("model_config", self.model_values())
        training = self.build("training_config", self.training_values())
        evaluation = self.build("eval_config", self.eval_values(training))
        augmentation = self.build("augmentation_config", self.augmentation_values())
        model = self.check_levels(model)
        sections = {"dataset_config": dataset, "training_config": training,
                    "eval_config": evaluation, "augmentation_config": augmentation,
                    "model_config": model}
        self.check_required(sections)
        return ExperimentConfig(**sections, defaulted=frozenset(self.defaulted))

    # --- sections -------------------------------------------------------------------------

    def dataset_values(self) -> dict[str, Any]:
        values = self.raw("dataset_config")
        legacy = values.pop("val_json_file", None)
        if legacy is not None:
            current = values.get("validation_json_file")
            if current is not None and current != legacy:
                raise self.fail(
                    "dataset_config.val_json_file",
                    f"disagrees with validation_json_file ('{_short(legacy)}' vs "
                    f"'{_short(current)}'); set one",
                )
            values["validation_json_file"] = legacy
        if "num_classes" in values and values["num_classes"] < 2:
            raise self.fail("dataset_config.num_classes",
                            "must be >= 2 (object classes + 1 for the background, as in TAO)")
        if "image_size" in values:
            values["image_size"] = self.image_size(values["image_size"])
        self.positive("dataset_config", values, "max_instances_per_image")
        return values

    def image_size(self, text: str) -> tuple[int, int]:
        shown = _short(text)
        hw, wxh = IMAGE_SIZE_HW.match(text.strip()), IMAGE_SIZE_WXH.match(text.strip())
        if hw:
            height, width = int(hw.group(1)), int(hw.group(2))
        elif wxh:
            width, height = int(wxh.group(1)), int(wxh.group(2))
        else:
            raise self.fail("dataset_config.image_size",
                            f"'{shown}' is not 'H,W', '(H, W)' or 'WxH'")
        for side in (height, width):
            if side < 128 or side % 32 or side > MAX_IMAGE_SIDE:
                raise self.fail("dataset_config.image_size",
                                f"'{shown}': each side must be a multiple of 32 in "
                                f"128..{MAX_IMAGE_SIDE}")
        return height, width

    def model_values(self) -> dict[str, Any]:
        values = self.raw("model_config")
        training = self.message.training_config
        training_name = training.model_name if training.HasField("model_name") else None
        if "model_name" not in values and training_name is not None:
            values["model_name"] = training_name
        if "model_name" in values:
            values["model_name"] = self.model_name("model_config.model_name", values["model_name"])
        if training_name is not None:
            log.warning("%s: training_config.model_name is not part of TAO's schema; "
                        "model_config.model_name is the one that counts", self.source)
            normalised = self.model_name("training_config.model_name", training_name)
            if normalised != values["model_name"]:
                raise self.fail("training_config.model_name",
                                f"'{_short(training_name)}' disagrees with model_config.model_name "
                                f"'{values['model_name']}'")
        if "aspect_ratios" in values:
            values["aspect_ratios"] = self.aspect_ratios(values["aspect_ratios"])
        if "freeze_blocks" in values:
            values["freeze_blocks"] = self.freeze_blocks(values["freeze_blocks"])
        if "anchor_scale" in values:
            values["anchor_scale"] = float(values["anchor_scale"])
        else:  # D7 differs from the others: its default comes from the variant table
            values["anchor_scale"] = get_variant(values.get("model_name", ModelConfig.model_name)).anchor_scale
            self.defaulted.add("model_config.anchor_scale")
        self.positive("model_config", values, "anchor_scale", "num_scales")
        return values

    def model_name(self, dotted: str, name: str) -> str:
        try:
            return get_variant(name).name
        except EffdetError:
            raise self.fail(dotted, f"'{_short(name)}' is not one of efficientdet-d0 … "
                                    "efficientdet-d7x") from None

    def literal(self, dotted: str, text: str) -> Any:
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise self.fail(dotted, f"'{_short(text)}' is not a literal list") from None

    def aspect_ratios(self, text: str) -> tuple[tuple[float, float], ...]:
        dotted = "model_config.aspect_ratios"
        value = self.literal(dotted, text)
        rule = "must be a non-empty list of (width, height) pairs of positive numbers"
        if not isinstance(value, (list, tuple)) or not value:
            raise self.fail(dotted, rule)
        pairs = []
        for pair in value:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(_is_number(v) and v > 0 for v in pair)):
                raise self.fail(dotted, f"{rule}; got {_short(repr(pair))}")
            pairs.append((float(pair[0]), float(pair[1])))
        return tuple(pairs)

    def freeze_blocks(self, text: str) -> tuple[int, ...]:
        dotted = "model_config.freeze_blocks"
        value = self.literal(dotted, text) if text.strip() else []
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (not isinstance(value, (list, tuple))
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 8
                           for v in value)):
            raise self.fail(dotted, f"'{_short(text)}' must be a list of backbone block indices "
                                    "0-8 (TAO's numbering: 0 the stem, 1-7 the EfficientNet "
                                    "stages, 8 the unused top conv)")
        return tuple(sorted(set(value)))

    def check_levels(self, model: ModelConfig) -> ModelConfig:
        expected_max = get_variant(model.model_name).max_level
        for name, expected in (("min_level", 3), ("max_level", expected_max)):
            if getattr(model, name) != expected:
                log.warning("%s: model_config.%s %d is not supported for %s; using %d (as TAO does)",
                            self.source, name, getattr(model, name), model.model_name, expected)
                model = replace(model, **{name: expected})
        return model

    def training_values(self) -> dict[str, Any]:
        values = self.raw("training_config")
        values.pop("model_name", None)
        self.positive("training_config", values, "train_batch_size", "iterations_per_loop",
                      "checkpoint_period", "keep_checkpoint_max", "num_examples_per_epoch",
                      "num_epochs", "learning_rate", "logging_frequency")
        self.in_range("training_config.moving_average_decay", values, 0.0, 1.0, "[0, 1)",
                      low_open=False)
        self.in_range("training_config.lr_warmup_init", values, 0.0, 1.0, "(0, 1)", low_open=True)
        self.in_range("training_config.momentum", values, 0.0, 1.0, "[0, 1)", low_open=False)
        for name in ("l2_weight_decay", "l1_weight_decay", "clip_gradients_norm", "lr_warmup_epoch"):
            if name in values and not values[name] >= 0:
                raise self.fail(f"training_config.{name}", "must be >= 0")
        epochs = values.get("num_epochs", TrainingConfig.num_epochs)
        if values.get("lr_warmup_epoch", 0) > epochs:
            raise self.fail("training_config.lr_warmup_epoch",
                            f"must be <= num_epochs ({epochs})")
        if "skip_checkpoint_variables" in values:
            try:
                re.compile(values["skip_checkpoint_variables"])
            except re.error as exc:
                raise self.fail("training_config.skip_checkpoint_variables",
                                f"not a valid regular expression ({exc})") from None
        for name in ("moving_average_decay", "lr_warmup_init", "learning_rate", "l2_weight_decay",
                     "l1_weight_decay", "clip_gradients_norm", "momentum", "lr_warmup_epoch"):
            if name in values:
                values[name] = _float32_to_decimal(values[name])
        return values

    def eval_values(self, training: TrainingConfig) -> dict[str, Any]:
        values = self.raw("eval_config")
        self.positive("eval_config", values, "eval_batch_size", "eval_epoch_cycle",
                      "eval_samples", "max_detections_per_image")
        self.in_range("eval_config.min_score_thresh", values, 0.0, 1.0, "[0, 1)", low_open=False)
        if "min_score_thresh" in values:
            values["min_score_thresh"] = _float32_to_decimal(values["min_score_thresh"])
        cycle = values.get("eval_epoch_cycle", EvalConfig.eval_epoch_cycle)
        if training.num_epochs < cycle:
            raise self.fail("eval_config.eval_epoch_cycle",
                            f"{cycle} exceeds training_config.num_epochs ({training.num_epochs})")
        return values

    def augmentation_values(self) -> dict[str, Any]:
        values = self.raw("augmentation_config")
        for name in ("random_crop_min_scale", "random_crop_max_scale"):
            if name in values:
                if not values[name] > 0:
                    raise self.fail(f"augmentation_config.{name}", "must be > 0")
                values[name] = _float32_to_decimal(values[name])
        low = values.get("random_crop_min_scale", AugmentationConfig.random_crop_min_scale)
        high = values.get("random_crop_max_scale", AugmentationConfig.random_crop_max_scale)
        if low > high:
            raise self.fail("augmentation_config.random_crop_min_scale",
                            f"{low} exceeds random_crop_max_scale ({high})")
        return values

    # --- rules ----------------------------------------------------------------------------

    def positive(self, section: str, values: dict[str, Any], *names: str) -> None:
        for name in names:
            if name in values and not values[name] > 0:
                raise self.fail(f"{section}.{name}", f"must be > 0 (got {values[name]})")

    def in_range(self, dotted: str, values: dict[str, Any], low: float, high: float,
                 shown: str, low_open: bool) -> None:
        name = dotted.split(".")[1]
        if name not in values:
            return
        value = values[name]
        above_low = value > low if low_open else value >= low
        if not (above_low and value < high):
            raise self.fail(dotted, f"must be in {shown} (got {_float32_to_decimal(value)})")


def _short(text: str, limit: int = ECHO_LIMIT) -> str:
    """A value as echoed in an error: a hostile spec cannot flood the terminal or the log."""
    return text if len(text) <= limit else text[:limit] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _float32_to_decimal(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (so 0.1 reads back as 0.1)."""
    return float(f"{value:.7g}") if value else 0.0


def path_warnings(config: ExperimentConfig) -> list[str]:
    """Data paths and checkpoints the spec names that do not exist (tasks needing them fail)."""
    from glob import glob

    problems = []
    data, training = config.dataset_config, config.training_config
    for name, pattern in (("dataset_config.training_file_pattern", data.training_file_pattern),
                          ("dataset_config.validation_file_pattern", data.validation_file_pattern)):
        if pattern and not glob(pattern):
            problems.append(f"{name} '{pattern}' matches no file")
    for name, file in (("dataset_config.validation_json_file", data.validation_json_file),
                       ("training_config.checkpoint", training.checkpoint),
                       ("training_config.pruned_model_path", training.pruned_model_path)):
        if file and not Path(file).exists():
            problems.append(f"{name} '{file}' does not exist")
    return problems
