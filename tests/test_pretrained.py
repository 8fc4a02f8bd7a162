"""Public pretrained weights: keras.applications, TAO NGC backbones, automl checkpoints."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from effdet.errors import EffdetError
from effdet.model.efficientdet import build_efficientdet
from effdet.model.pretrained import detect_format, load_pretrained
from effdet.model.tao_names import tao_layer_names
from effdet.model.variants import get_variant
from effdet.spec.config import ModelConfig

DATA = Path(__file__).parent / "data"
SIZE = (128, 128)
B0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)


def randomise(model: keras.Model, seed: int) -> None:
    """Random weights everywhere, BN statistics included (positive variances)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.standard_normal(variable.shape).astype("float32") * 0.2
        if variable.path.endswith("moving_variance") or variable.path.endswith("variance"):
            value = np.abs(value) + 0.5
        if variable.path.endswith("gamma"):
            value = 1.0 + value
        variable.assign(value)


def stage_ends(depth: float) -> list[str]:
    """Layers ending stages 3, 5, 7 (our feature levels 3, 4, 5) in either model."""
    names = []
    for stage in (3, 5, 7):
        repeats = math.ceil(depth * B0_STAGE_REPEATS[stage - 1])
        last = chr(ord("a") + repeats - 1)
        names.append(f"block{stage}{last}_{'add' if repeats > 1 else 'project_bn'}")
    return names


def ours(model_name: str, num_classes: int = 3, **changes) -> tuple[keras.Model, ModelConfig, Any]:
    config = ModelConfig(model_name=model_name)
    variant = get_variant(model_name).replace(**changes)
    return build_efficientdet(config, num_classes, SIZE, variant=variant), config, variant


def keras2_layout(source: Path, dest: Path, depthwise_name: str = "kernel") -> None:
    """Rewrite a legacy HDF5 as Keras 2 writes it (`kernel:0` weight names)."""
    shutil.copy(source, dest)
    with h5py.File(dest, "r+") as h5:
        group = h5["model_weights"]
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            names = [n.decode() if isinstance(n, bytes) else n
                     for n in group[layer].attrs.get("weight_names", [])]
            renamed = []
            for name in names:
                new = name + ":0"
                if group[layer].get(name) is None:
                    continue
                if name.endswith("dwconv/kernel") and depthwise_name != "kernel":
                    new = name[:-len("kernel")] + depthwise_name + ":0"
                group[layer].move(name, new)
                renamed.append(new.encode())
            if names:
                group[layer].attrs["weight_names"] = renamed


class BackboneCheck:
    """Our model (tiny BiFPN/heads, the backbone under test) against a keras.applications one."""

    def __init__(self, app: keras.Model, model_name: str, depth: float) -> None:
        self.model, self.config, self.variant = ours(model_name, fpn_cell_repeats=1,
                                                     box_class_repeats=1)
        ends = stage_ends(depth)
        images = np.random.default_rng(1).uniform(0, 255, (2, *SIZE, 3)).astype("float32")
        # Each side's own input normalisation: keras.applications' Rescaling + Normalization
        # layers run inside its model; ours expects the normalised image.
        reference = keras.Model(app.input, [app.get_layer("stem_conv_pad").input]
                                + [app.get_layer(n).output for n in ends])
        self.normalised, *self.expected = reference(images)
        self.features = keras.Model(self.model.input,
                                    [self.model.get_layer(n).output for n in ends])
        self.backbone = sum(len(layer.weights) for layer in self.model.layers
                            if layer.name.startswith(("stem", "block")))

    def __call__(self, path: Path) -> None:
        randomise(self.model, seed=99)  # nothing left over from the previous file
        _, report = load_pretrained(path, self.model, self.config, self.variant, key="unused")
        assert len(report.loaded) == self.backbone, path
        assert report.unused and all(not n.startswith(("stem", "block")) for n in report.unused)
        for got, want in zip(self.features(self.normalised), self.expected):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


ALL_FORMATS = (".weights.h5", ".keras", ".h5", "-keras2.hdf5")


# B3 with its top only in the legacy layout: building a B3 takes ~10 s here, and the top only
# matters where the file must be matched to a keras.applications model (B0 covers that).
@pytest.mark.parametrize("application,model_name,depth,top,formats", [
    ("EfficientNetB0", "efficientdet-d0", 1.0, False, ALL_FORMATS),
    ("EfficientNetB0", "efficientdet-d0", 1.0, True, ALL_FORMATS),
    ("EfficientNetB3", "efficientdet-d3", 1.4, False, ALL_FORMATS),
    ("EfficientNetB3", "efficientdet-d3", 1.4, True, ("-keras2.hdf5",))])
def test_keras_applications_weights_give_keras_features(tmp_path, application, model_name, depth,
                                                        top, formats):
    app = getattr(keras.applications, application)(weights=None, include_top=top,
                                                    input_shape=(*SIZE, 3))
    randomise(app, seed=int(top))
    check = BackboneCheck(app, model_name, depth)
    app.save_weights(tmp_path / "m.weights.h5")
    app.save(tmp_path / "m.keras")
    app.save(tmp_path / "m.h5")  # Keras 3 writes the legacy (Keras 2) HDF5 layout
    keras2_layout(tmp_path / "m.h5", tmp_path / "m-keras2.hdf5")
    for suffix in formats:
        check(tmp_path / f"m{suffix}")


def test_tao_ngc_backbone_names_load(tmp_path):
    # TAO's core/templates/efficientnet.py names layers like keras.applications
    # ('stem_conv', 'block1a_dwconv', …, 'top_conv', 'predictions'), its DepthwiseConv2D
    # variable is Keras 2's 'depthwise_kernel', and NGC ships the classifier (top) with it.
    app = keras.applications.EfficientNetB0(weights=None, include_top=True, input_shape=(*SIZE, 3))
    randomise(app, seed=3)
    app.save(tmp_path / "k3.h5")
    keras2_layout(tmp_path / "k3.h5", tmp_path / "efficientnet_b0.hdf5", "depthwise_kernel")
    with h5py.File(tmp_path / "efficientnet_b0.hdf5") as h5:
        assert "block1a_dwconv/depthwise_kernel:0" in h5["model_weights/block1a_dwconv"]
        assert "predictions" in h5["model_weights"]
    assert detect_format(tmp_path / "efficientnet_b0.hdf5") == "hdf5"
    BackboneCheck(app, "efficientdet-d0", 1.0)(tmp_path / "efficientnet_b0.hdf5")


# --- google/automl ------------------------------------------------------------------------


def fixture(model_name: str) -> dict:
    return json.loads((DATA / f"automl_{model_name}_variables.json").read_text())


def distinct_values(variables: list) -> dict[str, np.ndarray]:
    """Every tensor different from every other, so a misplaced one cannot go unnoticed."""
    return {name: np.random.default_rng(i).standard_normal(shape).astype("float32") + i
            for i, (name, shape) in enumerate(variables)}


def write_checkpoint(prefix: Path, tensors: dict[str, np.ndarray]) -> None:
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])


def expected_block_names(model_name: str) -> list[str]:
    """automl's blocks_k in order -> our block{stage}{letter}, counted from the stage repeats."""
    depth = get_variant(model_name).depth_coefficient
    return [f"block{s}{chr(ord('a') + r)}" for s, repeats in enumerate(B0_STAGE_REPEATS, 1)
            for r in range(math.ceil(depth * repeats))]


# A hand-checked sample, one of each kind of layer (automl name -> our variable[, index]).
SAMPLE = {
    "efficientnet-b0/stem/conv2d/kernel": ("stem_conv/kernel", None),
    "efficientnet-b0/blocks_0/conv2d/kernel": ("block1a_project_conv/kernel", None),
    "efficientnet-b0/blocks_0/tpu_batch_normalization/gamma": ("block1a_bn/gamma", None),
    "efficientnet-b0/blocks_0/tpu_batch_normalization_1/moving_mean":
        ("block1a_project_bn/moving_mean", None),
    "efficientnet-b0/blocks_1/conv2d/kernel": ("block2a_expand_conv/kernel", None),
    "efficientnet-b0/blocks_1/conv2d_1/kernel": ("block2a_project_conv/kernel", None),
    "efficientnet-b0/blocks_1/tpu_batch_normalization/beta": ("block2a_expand_bn/beta", None),
    "efficientnet-b0/blocks_1/tpu_batch_normalization_1/beta": ("block2a_bn/beta", None),
    "efficientnet-b0/blocks_1/tpu_batch_normalization_2/beta": ("block2a_project_bn/beta", None),
    "efficientnet-b0/blocks_2/depthwise_conv2d/depthwise_kernel": ("block2b_dwconv/kernel", None),
    "efficientnet-b0/blocks_15/se/conv2d_1/bias": ("block7a_se_expand/bias", None),
    "resample_p6/conv2d/kernel": ("resample_p6_conv/kernel", None),
    "resample_p6/bn/moving_variance": ("resample_p6_bn/moving_variance", None),
    "fpn_cells/cell_0/fnode0/resample_0_3_5/conv2d/kernel": (None, None),
    "fpn_cells/cell_0/fnode1/resample_0_2_6/conv2d/kernel":
        ("fpn_cell0_node1_input0_conv/kernel", None),
    "fpn_cells/cell_0/fnode4/resample_2_7_9/conv2d/kernel": (None, None),
    "fpn_cells/cell_0/fnode4/WSM": ("fpn_cell0_node4_fusion/fusion_weights", 0),
    "fpn_cells/cell_0/fnode4/WSM_1": ("fpn_cell0_node4_fusion/fusion_weights", 1),
    "fpn_cells/cell_0/fnode4/WSM_2": ("fpn_cell0_node4_fusion/fusion_weights", 2),
    "fpn_cells/cell_2/fnode7/op_after_combine12/conv/pointwise_kernel":
        ("fpn_cell2_node7_conv/pointwise_kernel", None),
    "fpn_cells/cell_2/fnode7/op_after_combine12/bn/gamma": ("fpn_cell2_node7_bn/gamma", None),
    "class_net/class-1/depthwise_kernel": ("class_net_conv1/depthwise_kernel", None),
    "class_net/class-2-bn-6/beta": ("class_net_conv2_bn_p6/beta", None),
    "class_net/class-predict/bias": ("class_net_predict/bias", None),
    "box_net/box-0-bn-7/moving_mean": ("box_net_conv0_bn_p7/moving_mean", None),
    "box_net/box-predict/pointwise_kernel": ("box_net_predict/pointwise_kernel", None),
}


def check_every_variable_lands(model: keras.Model, values: dict[str, np.ndarray],
                               model_name: str) -> None:
    weights = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    # Each of our variables holds exactly one checkpoint tensor (or fusion scalars), of its kind.
    owner = {}
    for name, value in values.items():
        if re.search(r"/WSM(_\d)?$", name):
            continue
        hits = [p for p, w in weights.items()
                if w.shape == value.shape and np.array_equal(w, value)]
        assert len(hits) == 1, (name, hits)
        owner[hits[0]] = name
    wsm = {n for n in values if re.search(r"/WSM(_\d)?$", n)}
    fusions = [p for p in weights if p.endswith("fusion_weights")]
    assert len(owner) + len(fusions) == len(weights)
    assert sum(weights[p].size for p in fusions) == len(wsm)
    for name, (path, index) in SAMPLE.items():
        if model_name != "efficientdet-d0" or path is None:
            continue
        got = weights[path] if index is None else weights[path][index]
        np.testing.assert_array_equal(got, values[name])
    # Fusion scalars are concatenated in node input order.
    for path in fusions:
        cell, node = re.match(r"fpn_cell(\d+)_node(\d+)_", path).groups()
        scope = f"fpn_cells/cell_{cell}/fnode{node}/WSM"
        expected = [values[scope + ("" if i == 0 else f"_{i}")] for i in range(weights[path].size)]
        np.testing.assert_array_equal(weights[path], np.array(expected, "float32"))
    # automl's blocks_k are our blocks in stage order; the parameter kind is kept.
    blocks = expected_block_names(model_name)
    for path, name in owner.items():
        match = re.match(r"efficientnet-b\d/blocks_(\d+)/", name)
        if match:
            assert path.startswith(blocks[int(match.group(1))] + "_"), (name, path)
        leaf = name.rsplit("/", 1)[1]
        assert path.rsplit("/", 1)[1] == ("kernel" if leaf == "depthwise_kernel"
                                          and "_dwconv" in path else leaf), (name, path)


@pytest.mark.parametrize("model_name", ["efficientdet-d0", "efficientdet-d3"])
def test_automl_tf2_names_land_on_the_right_weights(tmp_path, model_name):
    data = fixture(model_name)
    assert "google/automl" in data["source"]
    values = distinct_values(data["variables"])
    write_checkpoint(tmp_path / "ckpt-0", values)
    model, config, variant = ours(model_name, num_classes=data["num_classes"])
    kind, report = load_pretrained(tmp_path, model, config, variant, key="unused")
    assert kind.startswith("google/automl")
    assert len(report.loaded) == len(model.weights) and not report.missing and not report.unused
    check_every_variable_lands(model, values, model_name)


def test_automl_tf1_checkpoint_prefers_ema_and_reports_the_rest(tmp_path):
    data = fixture("efficientdet-d0")
    raw = distinct_values(data["variables"])
    ema = {name: value + 1000.0 for name, value in raw.items()}
    tensors = {**raw, **{f"{n}/ExponentialMovingAverage": v for n, v in ema.items()},
               **{f"{n}/Momentum": v for n, v in raw.items() if "moving_" not in n},
               "global_step": np.array(7, np.int64)}
    write_checkpoint(tmp_path / "model.ckpt-7", tensors)
    model, config, variant = ours("efficientdet-d0", num_classes=90)
    _, report = load_pretrained(tmp_path / "model.ckpt-7", model, config, variant, key="unused")
    check_every_variable_lands(model, ema, "efficientdet-d0")
    assert "global_step" in report.unused
    # Raw values the EMA replaces count as used; optimizer slots and the step are reported.
    assert len(report.unused) == 1 + sum("moving_" not in n for n in raw)


def test_head_shape_mismatch_is_one_error_with_the_regex(tmp_path):
    values = distinct_values(fixture("efficientdet-d0")["variables"])
    write_checkpoint(tmp_path / "ckpt", values)
    model, config, variant = ours("efficientdet-d0", num_classes=3)
    with pytest.raises(EffdetError) as error:
        load_pretrained(tmp_path / "ckpt", model, config, variant, key="unused")
    message = str(error.value)
    assert "class_net/class-predict/pointwise_kernel (1, 1, 64, 810)" in message
    assert 'skip_checkpoint_variables: "class_net_predict"' in message
    for pattern in ("class_net_predict", "class-predict", "-predict"):
        _, report = load_pretrained(tmp_path / "ckpt", model, config, variant, key="unused",
                                    skip=re.compile(pattern))
        assert set(report.skipped) >= {"class_net_predict/bias",
                                       "class_net_predict/pointwise_kernel"}
        assert not report.missing
    # TAO's Keras layer names (cv/efficientdet/models/efficientdet_arch.py, utils_keras.py).
    tao = tao_layer_names(model, 3, 7)
    assert {name: tao[name] for name in (
        "resample_p6_conv", "resample_p6_bn", "fpn_cell0_node3_input0_conv",
        "fpn_cell0_node3_input0_bn", "fpn_cell2_node4_fusion", "fpn_cell2_node4_conv",
        "fpn_cell2_node4_bn", "class_net_conv1", "class_net_conv1_bn_p4", "box_net_predict")} == {
        "resample_p6_conv": "p6", "resample_p6_bn": "p6_bn",
        "fpn_cell0_node3_input0_conv": "bifpn0_0_8_0",
        "fpn_cell0_node3_input0_bn": "bifpn0_0_8_0_bn",
        "fpn_cell2_node4_fusion": "weighted_fusion_4_2",
        "fpn_cell2_node4_conv": "after_combine_dw_conv_4_2", "fpn_cell2_node4_bn": "bifpn_bn_4_2",
        "class_net_conv1": "class-1", "class_net_conv1_bn_p4": "class-1-bn-4",
        "box_net_predict": "box-predict"}
    assert "block1a_dwconv" not in tao  # the backbone's names are TAO's already


def test_wrong_backbone_and_unknown_files_are_one_line_errors(tmp_path):
    write_checkpoint(tmp_path / "ckpt", distinct_values(fixture("efficientdet-d3")["variables"]))
    model, config, variant = ours("efficientdet-d0", num_classes=90)
    with pytest.raises(EffdetError, match="backbone is efficientnet-b3 but the model's is "
                                          "efficientnet-b0"):
        load_pretrained(tmp_path / "ckpt", model, config, variant, key="unused")
    write_checkpoint(tmp_path / "keras-object-graph", {
        "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE": np.zeros(3, np.float32)})
    with pytest.raises(EffdetError, match="none of its variables has an automl"):
        load_pretrained(tmp_path / "keras-object-graph", model, config, variant, key="unused")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\nnot really")
    with pytest.raises(EffdetError, match="junk.h5"):
        load_pretrained(tmp_path / "junk.h5", model, config, variant, key="unused")
    with pytest.raises(EffdetError, match="no such weights file"):
        load_pretrained(tmp_path / "missing.h5", model, config, variant, key="unused")
