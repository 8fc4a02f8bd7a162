"""Models round-trip through .tlt files: architecture, weights, EMA; shape mismatches are clear."""

from __future__ import annotations

import re

import numpy as np
import pytest

from effdet.errors import EffdetError
from effdet.model.saving import (
    Architecture, assign_arrays, load_model, members_to_arrays, save_model, variables_to_members,
)
from effdet.model.variants import get_variant
from effdet.spec.config import ModelConfig

KEY = "saving-test-key"
TINY = dict(fpn_num_filters=16, fpn_cell_repeats=1, box_class_repeats=1, width_coefficient=0.25,
            depth_coefficient=0.25)


def tiny_architecture(num_classes=5):
    return Architecture(ModelConfig(), num_classes, (128, 128),
                        get_variant("efficientdet-d0").replace(**TINY))


def test_round_trip_rebuilds_and_prefers_ema(tmp_path):
    arch = tiny_architecture()
    model = arch.build()
    ema = {w.path: np.full(w.shape, 0.5, dtype=np.float32) for w in model.weights}
    path = tmp_path / "m.tlt"
    save_model(path, KEY, arch, model, manifest={"epoch": 2}, ema=ema)
    loaded = load_model(path, KEY)
    assert loaded.manifest["epoch"] == 2
    assert loaded.architecture == arch
    assert all(np.all(np.asarray(w) == 0.5) for w in loaded.model.weights)
    raw = load_model(path, KEY, use_ema=False)
    for a, b in zip(raw.model.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    save_model(tmp_path / "again.tlt", KEY, arch, model, manifest={"epoch": 2}, ema=ema)
    assert (tmp_path / "again.tlt").read_bytes() == path.read_bytes()


def test_shape_mismatch_lists_layers_and_skip_regex_avoids_it():
    source = tiny_architecture(num_classes=5).build()
    target = tiny_architecture(num_classes=3).build()
    arrays = members_to_arrays("weights", variables_to_members("weights", source.weights))
    with pytest.raises(EffdetError, match="class_net_predict"):
        assign_arrays(target.weights, arrays, "ckpt.tlt")
    loaded = assign_arrays(target.weights, arrays, "ckpt.tlt", skip=re.compile("class_net_predict"))
    assert loaded and not any("class_net_predict" in name for name in loaded)
