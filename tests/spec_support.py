"""Spec text for tests: fill in the fields TAO requires, so a test states only what it checks."""

from __future__ import annotations

from effdet.spec.loader import REQUIRED_FIELDS
from effdet.spec.textscan import scan_fields

# One value per required field; a tiny, self-consistent experiment.
REQUIRED_VALUES = {
    "dataset_config.training_file_pattern": '"train-*"',
    "dataset_config.validation_file_pattern": '"val-*"',
    "dataset_config.validation_json_file": '"val.json"',
    "dataset_config.num_classes": "5",
    "dataset_config.image_size": '"128,128"',
    "training_config.train_batch_size": "4",
    "training_config.checkpoint_period": "1",
    "training_config.num_examples_per_epoch": "16",
    "training_config.num_epochs": "2",
    "training_config.lr_warmup_init": "0.001",
    "training_config.learning_rate": "0.01",
    "eval_config.eval_batch_size": "4",
    "eval_config.eval_epoch_cycle": "1",
    "eval_config.eval_samples": "8",
    "model_config.model_name": '"efficientdet-d0"',
}
assert set(REQUIRED_VALUES) == set(REQUIRED_FIELDS)


def complete(text: str) -> str:
    """`text` followed by the required fields it leaves out (its own lines keep their numbers)."""
    present = {site.dotted for site in scan_fields(text) if not site.is_message}
    aliases = {"training_config.model_name": "model_config.model_name",
               "dataset_config.val_json_file": "dataset_config.validation_json_file"}
    present |= {aliases[name] for name in present & aliases.keys()}
    blocks: dict[str, list[str]] = {}
    for dotted, value in REQUIRED_VALUES.items():
        if dotted not in present:
            section, name = dotted.split(".")
            blocks.setdefault(section, []).append(f"  {name}: {value}")
    tail = "".join(f"\n{section} {{\n" + "\n".join(lines) + "\n}" for section, lines in blocks.items())
    return text + tail + "\n"
