"""Models in .tlt files: the manifest that rebuilds the network, and its weights.

Weights are stored one `.npy` member per variable (`<group>/<variable path>.npy`), read back
with `allow_pickle=False`: no model file is ever unpickled, and the bytes are reproducible
(HDF5 would embed timestamps). Groups: `weights` (the raw trained weights), `ema` (their
moving average, what evaluation and export use), `optimizer` (state needed to resume).
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from effdet.errors import EffdetError
from effdet.formats.tlt import TltContents, read_tlt, write_tlt
from effdet.model.efficientdet import build_efficientdet
from effdet.model.variants import Variant
from effdet.spec.config import ExperimentConfig, ModelConfig

WEIGHTS, EMA, OPTIMIZER = "weights", "ema", "optimizer"


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a network exactly, as recorded in a .tlt manifest."""

    model_config: ModelConfig
    num_classes: int  # the spec's num_classes: object classes + 1 (background), as in TAO
    image_size: tuple[int, int]
    variant: Variant
    widths: Mapping[str, int] | None = None

    @property
    def head_classes(self) -> int:
        return self.num_classes - 1

    def build(self, sync_bn: bool = False) -> keras.Model:
        """`sync_bn` only changes training (see `build_efficientdet`), so it is not recorded."""
        return build_efficientdet(self.model_config, self.head_classes, self.image_size,
                                  variant=self.variant, widths=self.widths, sync_bn=sync_bn)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "model_config": dataclasses.asdict(self.model_config),
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "variant": dataclasses.asdict(self.variant),
            "widths": dict(sorted(self.widths.items())) if self.widths else None,
        }

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Architecture:
        model_config = dict(manifest["model_config"])
        model_config["aspect_ratios"] = tuple(tuple(p) for p in model_config["aspect_ratios"])
        model_config["freeze_blocks"] = tuple(model_config["freeze_blocks"])
        return cls(
            model_config=ModelConfig(**model_config),
            num_classes=int(manifest["num_classes"]),
            image_size=(int(manifest["image_size"][0]), int(manifest["image_size"][1])),
            variant=Variant(**manifest["variant"]),
            widths=manifest.get("widths") or None,
        )

    @classmethod
    def from_config(cls, config: ExperimentConfig, variant: Variant,
                    widths: Mapping[str, int] | None = None) -> Architecture:
        return cls(config.model_config, config.dataset_config.num_classes,
                   config.dataset_config.image_size, variant, widths)


def arrays_to_members(group: str, arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
        members[f"{group}/{name}.npy"] = buffer.getvalue()
    return members


def variables_to_members(group: str, variables: Iterable[Any]) -> dict[str, bytes]:
    arrays: dict[str, np.ndarray] = {}
    for variable in variables:
        if variable.path in arrays:
            raise EffdetError(f"two model variables share the path {variable.path!r}")
        arrays[variable.path] = keras.ops.convert_to_numpy(variable)
    return arrays_to_members(group, arrays)


def members_to_arrays(group: str, members: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    prefix = f"{group}/"
    return {
        name[len(prefix):-len(".npy")]: np.lib.format.read_array(io.BytesIO(data),
                                                                 allow_pickle=False)
        for name, data in members.items()
        if name.startswith(prefix) and name.endswith(".npy")
    }


def assign_arrays(variables: Iterable[Any], arrays: Mapping[str, np.ndarray], source: str, *,
                  skip: re.Pattern[str] | None = None, require_all: bool = True) -> list[str]:
    """Copy arrays into variables matched by path; mismatched shapes are one clear error."""
    loaded, mismatched, missing = [], [], []
    for variable in variables:
        if skip is not None and skip.search(variable.path):
            continue
        array = arrays.get(variable.path)
        if array is None:
            missing.append(variable.path)
            continue
        if tuple(array.shape) != tuple(variable.shape):
            mismatched.append(f"{variable.path} {tuple(array.shape)} vs {tuple(variable.shape)}")
            continue
        variable.assign(array)
        loaded.append(variable.path)
    if mismatched:
        raise EffdetError(f"{source}: {len(mismatched)} layers do not match the model's shapes "
                          f"(checkpoint vs model): {'; '.join(mismatched[:4])}"
                          + (" …" if len(mismatched) > 4 else ""))
    if require_all and missing:
        raise EffdetError(f"{source}: {len(missing)} variables missing, e.g. {missing[:3]}")
    return loaded


def save_model(path: str | Path, key: str, architecture: Architecture, model: keras.Model, *,
               manifest: Mapping[str, Any], ema: Mapping[str, np.ndarray] | None = None,
               extra_members: Mapping[str, bytes] | None = None) -> None:
    """Write an encrypted .tlt atomically: manifest (+ architecture), weights, EMA, extras.

    `ema` maps model variable paths to their moving averages.
    """
    members = variables_to_members(WEIGHTS, model.weights)
    if ema is not None:
        members.update(arrays_to_members(EMA, ema))
    members.update(extra_members or {})
    full_manifest = {**manifest, "architecture": architecture.to_manifest()}
    write_tlt(path, TltContents(full_manifest, members), key)


@dataclass(frozen=True)
class LoadedModel:
    model: keras.Model
    architecture: Architecture
    manifest: dict[str, Any]
    members: dict[str, bytes]


def load_model(path: str | Path, key: str, *, use_ema: bool = True) -> LoadedModel:
    """Rebuild the network a .tlt describes and load its (EMA, when present) weights."""
    contents: TltContents = read_tlt(path, key)
    if "architecture" not in contents.manifest:
        raise EffdetError(f"{path}: not an effdet model (no architecture in its manifest)")
    architecture = Architecture.from_manifest(contents.manifest["architecture"])
    model = architecture.build()
    group = EMA if use_ema and any(m.startswith(f"{EMA}/") for m in contents.members) else WEIGHTS
    assign_arrays(model.weights, members_to_arrays(group, contents.members), str(path))
    return LoadedModel(model, architecture, contents.manifest, contents.members)
