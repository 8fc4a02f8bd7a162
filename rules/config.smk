# Check the configuration before any job: keys and types (config/config.schema.yaml), the
# experiments `run` names, and the files they point at. A problem stops Snakemake with exit
# code 1 and one line, "config error: <where>: <what>".
import math
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.utils import validate

from effdet.errors import EffdetError
from effdet.spec import load_spec

CONFIG_SCHEMA = str(Path(workflow.main_snakefile).parent / "config" / "config.schema.yaml")
# Values echoed in an error are cut to this many characters.
ECHO_LIMIT = 40


def config_error(where, what):
    sys.exit(f"config error: {where}: {what}")


def _short(text):
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "…"


def _non_finite(value, where):
    """The first NaN or infinity in the config (JSON Schema's bounds let them through)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    children = (value.items() if isinstance(value, dict)
                else enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        found = _non_finite(child, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _schema_problem(error):
    where = ".".join(str(p) for p in error.absolute_path) or "config"
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        allowed = ", ".join(sorted(known)) or "none"
        return where, f"unknown key {', '.join(map(repr, unknown))} (allowed: {allowed})"
    if error.validator == "required":
        return where, error.message.replace("is a required property", "is missing")
    shown = repr(error.instance)
    return where, error.message.replace(shown, _short(shown), 1)


def check_config(config):
    bad = _non_finite(config, "")
    if bad:
        config_error(bad, "must be a finite number")
    schema = yaml.safe_load(Path(CONFIG_SCHEMA).read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        config_error(*_schema_problem(jsonschema.exceptions.best_match(errors)))
    validate(config, CONFIG_SCHEMA)  # fills in the schema's defaults
    for name in config["run"]:
        if name not in config["experiments"]:
            config_error("run", f"'{name}' is not under experiments "
                         f"({', '.join(config['experiments'])})")
        check_experiment_files(name, config["experiments"][name])


def check_experiment_files(name, experiment):
    where = f"experiments.{name}"
    paths = [(f"{where}.{key}", experiment[key], "file") for key in ("spec", "retrain_spec")]
    coco = experiment["dataset"].get("coco")
    if coco:
        paths += [(f"{where}.dataset.coco.image_dir", coco["image_dir"], "directory"),
                  (f"{where}.dataset.coco.train", coco["train"], "file"),
                  (f"{where}.dataset.coco.val", coco["val"], "file")]
    if "pretrained" in experiment and not Path(experiment["pretrained"]).exists():
        config_error(f"{where}.pretrained", f"'{experiment['pretrained']}' does not exist")
    for key, path, kind in paths:
        exists = Path(path).is_dir() if kind == "directory" else Path(path).is_file()
        if not exists:
            config_error(key, f"{kind} '{path}' does not exist")
    # Training's start weights are the rule's `pretrained` input: the spec may name no other.
    try:
        start = load_spec(experiment["spec"]).training_config.checkpoint
    except EffdetError as exc:
        config_error(f"{where}.spec", str(exc))
    if start != experiment.get("pretrained", ""):
        config_error(f"{where}.pretrained",
                     f"must be the spec's training_config.checkpoint ({experiment['spec']}: "
                     f"{start or 'none'!r}, pretrained: "
                     f"{experiment.get('pretrained') or 'none'!r})")
    # The retrain spec must start from this experiment's pruned model (TAO's retrain spec sets
    # both fields); the rule's input is that model, so anything else would be a hidden input.
    pruned = f"results/{name}/prune/model.tlt"
    try:
        training = load_spec(experiment["retrain_spec"]).training_config
    except EffdetError as exc:
        config_error(f"{where}.retrain_spec", str(exc))
    for field in ("pruned_model_path", "checkpoint"):
        found = getattr(training, field)
        if found != pruned:
            config_error(f"{where}.retrain_spec",
                         f"{experiment['retrain_spec']} must set training_config.{field}: "
                         f'"{pruned}" (found {found or "none"!r})')


check_config(config)
