"""Copy a source's arrays into a model, accounting for every variable on both sides."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from effdet.errors import EffdetError


@dataclass(frozen=True)
class Transfer:
    """What a source offers: arrays by our variable path, their names in the source, and the
    source's variables that have no counterpart in the model."""

    arrays: Mapping[str, np.ndarray]
    source_names: Mapping[str, str] = field(default_factory=dict)
    unused: tuple[str, ...] | list[str] = ()


@dataclass(frozen=True)
class TransferReport:
    loaded: tuple[str, ...]
    skipped: tuple[str, ...]  # model variables matched by skip_checkpoint_variables
    missing: tuple[str, ...]  # model variables the source has nothing for (left as built)
    unused: tuple[str, ...]  # source variables with no counterpart in the model

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)}, skipped {len(self.skipped)} "
                f"(skip_checkpoint_variables), not in the source {len(self.missing)}, "
                f"unused from the source {len(self.unused)}")


def _layer(path: str) -> str:
    return path.rsplit("/", 1)[0]


def apply_transfer(variables: Iterable[Any], transfer: Transfer, source: str, *,
                   skip: re.Pattern[str] | None = None,
                   aliases: Mapping[str, tuple[str, ...]] | None = None) -> TransferReport:
    """Assign `transfer` onto `variables`; `skip` is searched in each variable's path and in its
    aliases (TAO's and automl's names of the same variable), so any of those namings works."""
    aliases = aliases or {}
    loaded, skipped, missing, mismatched = [], [], [], []
    for variable in variables:
        path = variable.path
        names = (path, *aliases.get(path, ()), transfer.source_names.get(path, ""))
        if skip is not None and any(name and skip.search(name) for name in names):
            skipped.append(path)
            continue
        array = transfer.arrays.get(path)
        if array is None:
            missing.append(path)
        elif tuple(array.shape) != tuple(variable.shape):
            mismatched.append((path, tuple(array.shape), tuple(variable.shape)))
        else:
            loaded.append((variable, array))
    if mismatched:
        layers = sorted({_layer(path) for path, *_ in mismatched})
        details = "; ".join(
            f"{transfer.source_names.get(path, path)} {theirs} -> {path} {ours}"
            for path, theirs, ours in mismatched[:3])
        raise EffdetError(
            f"{source}: {len(mismatched)} variables of {len(layers)} layers "
            f"({', '.join(layers[:4])}{' …' if len(layers) > 4 else ''}) do not match the "
            f"model's shapes (source vs model: {details}); to start them afresh set "
            f'training_config.skip_checkpoint_variables: "{"|".join(map(re.escape, layers))}"')
    for variable, array in loaded:
        variable.assign(array.astype(np.dtype(variable.dtype), copy=False))
    return TransferReport(tuple(v.path for v, _ in loaded), tuple(skipped), tuple(missing),
                          tuple(transfer.unused))
