"""Spec text for tests: fill in the fields TAO requires, so a test states only what it checks."""

from __future__ import annotations

from effdet.spec.config import ExperimentConfig
from effdet.spec.loader import REQUIRED_FIELDS
from effdet.spec.render import render_value
from effdet.spec.textscan import scan_fields

# Required paths need a non-empty value; these name files no test creates.
PLACEHOLDER_PATHS = {
    "dataset_config.training_file_pattern": '"train-*"',
    "dataset_config.validation_file_pattern": '"val-*"',
    "dataset_config.validation_json_file": '"val.json"',
}
ALIASES = {"training_config.model_name": "model_config.model_name",
           "dataset_config.val_json_file": "dataset_config.validation_json_file"}


def required_value(dotted: str) -> str:
    """The placeholder, or the dataclass default (what these tests relied on before)."""
    if dotted in PLACEHOLDER_PATHS:
        return PLACEHOLDER_PATHS[dotted]
    section, name = dotted.split(".")
    config = ExperimentConfig()
    value = getattr(getattr(config, section), name)
    if name == "image_size":
        return f'"{value[0]},{value[1]}"'
    return render_value(value)


def complete(text: str) -> str:
    """`text` followed by the required fields it leaves out (its own lines keep their numbers)."""
    present = {site.dotted for site in scan_fields(text) if not site.is_message}
    present |= {ALIASES[name] for name in present & ALIASES.keys()}
    blocks: dict[str, list[str]] = {}
    for dotted in REQUIRED_FIELDS:
        if dotted not in present:
            section, name = dotted.split(".")
            blocks.setdefault(section, []).append(f"  {name}: {required_value(dotted)}")
    tail = "".join(f"\n{section} {{\n" + "\n".join(lines) + "\n}" for section, lines in blocks.items())
    return text + tail + "\n"

