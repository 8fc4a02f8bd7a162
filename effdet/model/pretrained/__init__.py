"""Start a model from public weights: our .tlt, keras.applications / TAO NGC EfficientNet
backbones (Keras files), or google/automl EfficientDet checkpoints (TF1 and TF2 names)."""

from __future__ import annotations

import re
from pathlib import Path

import keras

from effdet.formats.tlt import read_tlt
from effdet.model.pretrained.automl import automl_names, checkpoint_prefix, read_automl
from effdet.model.pretrained.detect import HDF5, KERAS, TF_CHECKPOINT, detect_format
from effdet.model.pretrained.keras_h5 import keras_transfer
from effdet.model.pretrained.transfer import Transfer, TransferReport, apply_transfer
from effdet.model.saving import EMA, WEIGHTS, members_to_arrays
from effdet.model.tao_names import tao_layer_names
from effdet.model.variants import Variant
from effdet.spec.config import ModelConfig

__all__ = ["TransferReport", "detect_format", "load_pretrained", "tao_aliases"]

SOURCE_KINDS = {
    "tlt": "effdet .tlt",
    HDF5: "Keras HDF5 EfficientNet (keras.applications / TAO NGC)",
    KERAS: "Keras .keras EfficientNet (keras.applications)",
    TF_CHECKPOINT: "google/automl EfficientDet checkpoint",
}


def _automl_names(model: keras.Model, model_config: ModelConfig, variant: Variant):
    return automl_names(model, variant.backbone, model_config.min_level, model_config.max_level,
                        variant.box_class_repeats, variant.fpn_cell_repeats)


def tao_aliases(model: keras.Model, model_config: ModelConfig,
                variant: Variant) -> dict[str, tuple[str, ...]]:
    """Our variable path -> its names in TAO's Keras model (`class-predict/bias`) and in
    automl's/TAO's TF1 checkpoints (`class_net/class-predict/bias`)."""
    layers = tao_layer_names(model, model_config.min_level, model_config.max_level)
    automl = {target.path: name if target.index is None else name.rsplit("/", 1)[0]
              for name, target in _automl_names(model, model_config, variant).items()}
    aliases = {}
    for variable in model.weights:
        layer, leaf = variable.path.rsplit("/", 1)
        names = (f"{layers[layer]}/{leaf}",) if layer in layers else ()
        if variable.path in automl:
            names += (automl[variable.path],)
        aliases[variable.path] = names
    return aliases


def _tlt_transfer(path: Path, key: str) -> Transfer:
    contents = read_tlt(path, key)
    group = EMA if any(m.startswith(f"{EMA}/") for m in contents.members) else WEIGHTS
    return Transfer(members_to_arrays(group, contents.members))


def load_pretrained(path: Path, model: keras.Model, model_config: ModelConfig, variant: Variant,
                    key: str, skip: re.Pattern[str] | None = None) -> tuple[str, TransferReport]:
    """Initialise `model` from `path`, whatever its kind; returns the kind and the accounting."""
    kind = detect_format(path)
    if kind == TF_CHECKPOINT:
        names = _automl_names(model, model_config, variant)
        transfer = read_automl(checkpoint_prefix(path), names, model)
    elif kind in (HDF5, KERAS):
        transfer = keras_transfer(path, kind, model)
    else:
        transfer = _tlt_transfer(path, key)
    report = apply_transfer(model.weights, transfer, str(path), skip=skip,
                            aliases=tao_aliases(model, model_config, variant))
    return SOURCE_KINDS[kind], report
