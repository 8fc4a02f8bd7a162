"""prune: channel groups, TAO's ranking rules, and surgery that keeps the network's function."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from effdet.errors import EffdetError
from effdet.model.saving import Architecture, load_model, save_model
from effdet.model.variants import get_variant
from effdet.pruning.criteria import (equalize, filter_norms, kept_count, kept_indices,
                                     normalize)
from effdet.pruning.groups import channel_graph
from effdet.pruning.surgery import PruneSettings, group_statistic
from effdet.spec.config import ModelConfig
from effdet.tasks.prune import MODEL_FILE, REPORT_FILE, prune
from tests.spec_support import complete

KEY = "prune-test-Key-3"
REPO = Path(__file__).resolve().parents[1]
SIZE = (128, 128)
# Two blocks per stage from stage 4 on (residual adds), two BiFPN cells, two head convs.
SMALL = {"fpn_num_filters": 24, "fpn_cell_repeats": 2, "box_class_repeats": 2,
         "width_coefficient": 0.25, "depth_coefficient": 0.5}
STRICT = {"granularity": 1, "min_filters": 1}


def architecture() -> Architecture:
    return Architecture(ModelConfig(), 5, SIZE, get_variant("efficientdet-d0").replace(**SMALL))


def randomized_model(seed: int = 0) -> keras.Model:
    """Random kernels with a per-filter spread (as training leaves them), BN statistics and
    biases, so that every sliced array changes the outputs if it is cut wrongly."""
    keras.utils.set_random_seed(seed)
    model = architecture().build()
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[1]
        shape = tuple(variable.shape)
        if name in ("kernel", "pointwise_kernel", "depthwise_kernel"):
            value = variable.numpy() * rng.uniform(0.05, 1.0, shape[-1] if name != "depthwise_kernel"
                                                    else (shape[-2], 1))
        elif name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:
            continue
        variable.assign(value.astype(np.float32))
    return model


def outputs(model: keras.Model, images: np.ndarray) -> np.ndarray:
    class_out, box_out = model(images, training=False)
    return np.concatenate([np.reshape(t, [-1]) for t in [*class_out, *box_out]])


def zero_channels(model: keras.Model, removed: dict[str, np.ndarray]) -> None:
    """Make the removed channels of each group contribute exactly nothing: zero filters and
    biases of every layer that writes them, and BN shift and mean (depthwise kernels too, so
    the ranking sees them as empty)."""
    graph = channel_graph(model)
    for layer in model.layers:
        writes, reads = graph.output_group.get(layer.name), graph.input_group.get(layer.name)
        for variable in layer.weights:
            name, value = variable.path.rsplit("/", 1)[1], variable.numpy()
            if name in ("kernel", "pointwise_kernel", "bias") and writes in removed and \
                    not isinstance(layer, keras.layers.DepthwiseConv2D):
                value[..., removed[writes]] = 0.0
            elif name in ("kernel", "depthwise_kernel") and reads in removed and \
                    isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
                value[:, :, removed[reads], :] = 0.0
            elif name in ("beta", "moving_mean") and writes in removed:
                value[removed[writes]] = 0.0
            else:
                continue
            variable.assign(value)


def prunable_groups(model: keras.Model) -> dict[str, int]:
    return {name: group.width for name, group in channel_graph(model).groups.items()
            if not group.fixed}


def test_groups_couple_residuals_squeeze_excitation_and_bifpn():
    graph = channel_graph(architecture().build())
    # Residual: block4a's and block4b's projections write the same channels.
    assert graph.group_of("block4a_project_conv") is graph.group_of("block4b_project_conv")
    # Squeeze-excitation: the expand conv and the SE expand multiply the same channels.
    assert graph.group_of("block2a_expand_conv") is graph.group_of("block2a_se_expand")
    assert "block2a_dwconv" in graph.group_of("block2a_expand_conv").followers
    # BiFPN: every node of every cell, the input-matching convs and P6 are fused together.
    bifpn = graph.group_of("fpn_cell0_node0_conv")
    assert {"fpn_cell1_node7_conv", "fpn_cell0_node1_input0_conv", "resample_p6_conv"} <= set(
        bifpn.producers)
    assert graph.input_group["class_net_conv0"] == bifpn.name  # shared head reads the BiFPN
    # Head convs are their own groups, their per-level BNs follow; predictions are fixed.
    head = graph.group_of("class_net_conv0")
    assert head.producers == ("class_net_conv0",)
    assert {f"class_net_conv0_bn_p{level}" for level in range(3, 8)} <= set(head.followers)
    assert graph.group_of("class_net_predict").fixed and graph.group_of("box_net_predict").fixed
    assert graph.groups[graph.input_group["stem_conv"]].fixed  # the image's RGB


def test_surgery_is_exact_when_the_pruned_filters_were_already_zero(tmp_path):
    """Acceptance 1: filters zeroed group-consistently, then pruned: same raw outputs."""
    model = randomized_model()
    rng = np.random.default_rng(1)
    removed = {name: np.sort(rng.choice(width, size=width // 3, replace=False))
               for name, width in prunable_groups(model).items() if width >= 3}
    zero_channels(model, removed)
    save_model(tmp_path / "m.tlt", KEY, architecture(), model, manifest={"classes": {"1": "a"}})

    result = prune(tmp_path / "m.tlt", tmp_path / "pruned", KEY,
                   PruneSettings(threshold=1e-6, **STRICT))
    pruned = load_model(result.model_path, KEY)
    widths = {row["group"]: row["kept"] for row in result.report["layers"]}
    for name, channels in removed.items():
        assert widths[name] == prunable_groups(model)[name] - len(channels), name
    images = np.random.default_rng(2).normal(size=(2, *SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(outputs(pruned.model, images), outputs(model, images), atol=1e-5)
    assert result.report["params"]["after"] < 0.8 * result.report["params"]["before"]
    assert pruned.manifest["classes"] == {"1": "a"}
    assert pruned.architecture.widths["block2a_expand_conv"] < model.get_layer(
        "block2a_expand_conv").filters


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    save_model(root / "m.tlt", KEY, architecture(), randomized_model(3), manifest={})
    return root / "m.tlt"


def test_higher_threshold_never_grows_and_counts_follow_granularity(trained_like, tmp_path):
    """Acceptance 2: monotone in -pth; kept counts multiples of -pg and >= -nf."""
    params = []
    for threshold in (0.0, 0.3, 0.5, 0.7, 0.9):
        report = prune(trained_like, tmp_path / f"p{threshold}", KEY,
                       PruneSettings(threshold=threshold, granularity=4, min_filters=8)).report
        params.append(report["params"]["after"])
        for row in report["layers"]:
            assert row["kept"] <= row["original"]
            if row["kept"] < row["original"]:
                assert row["kept"] % 4 == 0 and row["kept"] >= 8, row
    assert params == sorted(params, reverse=True) and params[-1] < params[0], params


def test_excluded_layer_keeps_its_whole_group(trained_like, tmp_path, caplog):
    # Ours, TAO's name of one of our layers (class-0 is class_net_conv0), and one matching
    # nothing: TAO ignores that one, we warn.
    with caplog.at_level(logging.WARNING, logger="effdet"):
        report = prune(trained_like, tmp_path / "out", KEY,
                       PruneSettings(threshold=0.9,
                                     excluded_layers=("block4b_project_conv", "class-0", "nope"),
                                     **STRICT)).report
    rows = {row["layer"]: row for row in report["layers"]}
    for name in ("block4a_project_conv", "block4b_project_conv", "class_net_conv0"):
        assert rows[name]["kept"] == rows[name]["original"]
    assert rows["block2a_expand_conv"]["kept"] < rows["block2a_expand_conv"]["original"]
    assert any("'nope'" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_refuses_a_non_empty_output_dir_and_a_wrong_key(trained_like, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    with pytest.raises(EffdetError, match="not empty"):
        prune(trained_like, tmp_path / "out", KEY)
    assert (tmp_path / "out" / "x").read_text() == "keep me"
    with pytest.raises(EffdetError):
        prune(trained_like, tmp_path / "new", "wrong-key")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), float("inf")])
def test_threshold_outside_0_1_is_refused_before_anything_is_read(tmp_path, threshold):
    with pytest.raises(EffdetError, match=r"-pth/--pruning_threshold must be in \[0, 1\]"):
        prune(tmp_path / "missing.tlt", tmp_path / "out", KEY, PruneSettings(threshold=threshold))
    assert not (tmp_path / "out").exists()


def test_criteria_unit_rules():
    kernel = np.zeros((1, 1, 2, 3))
    kernel[0, 0, :, 0] = [3, 4]
    kernel[0, 0, 0, 2] = 1
    np.testing.assert_allclose(filter_norms(kernel), [5, 0, 1])
    depthwise = np.zeros((3, 3, 2, 1))
    depthwise[1, 1, 1, 0] = 2
    np.testing.assert_allclose(filter_norms(depthwise, depthwise=True), [0, 2])
    np.testing.assert_allclose(normalize(np.array([1.0, 2.0, 4.0]), "max"), [0.25, 0.5, 1])
    np.testing.assert_allclose(normalize(np.array([3.0, 4.0]), "L2"), [1.2, 1.6])
    a, b = np.array([0.2, 0.9, 0.5]), np.array([0.8, 0.1, 0.5])
    np.testing.assert_allclose(equalize([a, b], "union"), [0.8, 0.9, 0.5])
    np.testing.assert_allclose(equalize([a, b], "intersection"), [0.2, 0.1, 0.5])
    np.testing.assert_allclose(equalize([a, b], "arithmetic_mean"), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(equalize([a, b], "geometric_mean"), np.sqrt(a * b))
    stat = np.array([0.05, 0.9, 0.2, 0.95, 0.3, 0.01, 0.5, 0.6, 0.7, 0.15])
    assert kept_count(stat, 0.1, 1, 1) == 8
    assert kept_count(stat, 0.1, 3, 1) == 9  # rounded up to the granularity
    assert kept_count(stat, 0.99, 4, 3) == 4  # at least min_filters, then rounded up
    assert kept_count(stat, 0.1, 4, 16) == 10  # never above the original count
    np.testing.assert_array_equal(kept_indices(stat, 3), [1, 3, 8])  # original order


def test_l2_normalizer_is_taos_and_a_threshold_keeps_taos_channels():
    # TAO's normalize_stat (nvidia_tao_tf1/core/pruning/utils.py): stat / ||stat||_2 * len(stat).
    stat = normalize(np.array([1.0, 2.0, 3.0, 4.0]), "L2")
    np.testing.assert_allclose(stat, [0.73, 1.46, 2.19, 2.92], atol=0.005)
    # TAO keeps the filters whose normalised statistic exceeds -pth: at 1.0 the last three
    # (the RMS normaliser kept only two: [0.37, 0.73, 1.10, 1.46]).
    count = kept_count(stat, 1.0, 1, 1)
    assert count == 3
    assert kept_indices(stat, count).tolist() == [1, 2, 3]


@pytest.mark.parametrize("criterion", ["union", "intersection", "arithmetic_mean",
                                       "geometric_mean"])
@pytest.mark.parametrize("normalizer", ["max", "L2"])
def test_group_statistic_merges_every_member(criterion, normalizer):
    """Acceptance 3 on a real group: block4's residual (two projections + their readers)."""
    model = randomized_model()
    graph = channel_graph(model)
    group = graph.group_of("block4a_project_conv")
    arrays = {v.path: v.numpy() for v in model.weights}
    members = [filter_norms(arrays[f"{name}/kernel"]) for name in group.producers]
    expected = equalize([normalize(m, normalizer) for m in members], criterion)
    got = group_statistic(group, graph, model, arrays,
                          PruneSettings(normalizer=normalizer, equalization_criterion=criterion))
    np.testing.assert_allclose(got, expected)
    assert group.producers == ("block4a_project_conv", "block4b_project_conv")
    manual = {"union": np.maximum, "intersection": np.minimum}
    if criterion in manual:
        np.testing.assert_allclose(got, manual[criterion](*[normalize(m, normalizer)
                                                          for m in members]))


def test_cli_prune_one_line_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "effdet", "prune", "-m",
                             str(tmp_path / "missing.tlt"), "-o", str(tmp_path / "out"),
                             "-k", KEY], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"effdet: error: {tmp_path / 'missing.tlt'}: model file not found")
    assert "Traceback" not in result.stderr
    assert KEY not in result.stdout + result.stderr


def test_report_file(trained_like, tmp_path):
    prune(trained_like, tmp_path / "out", KEY, PruneSettings(threshold=0.5))
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert set(report) >= {"params", "gmacs", "layers", "settings"}
    assert report["gmacs"]["after"] < report["gmacs"]["before"]
    assert (tmp_path / "out" / MODEL_FILE).is_file()
    assert report["params"]["ratio"] < 1.0


def effdet_cli(*args: str, cwd) -> None:
    result = subprocess.run([sys.executable, "-m", "effdet", *args], capture_output=True,
                            text=True, cwd=cwd, timeout=600,
                            env={**os.environ, "EFFDET_KEY": KEY, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert KEY not in result.stdout + result.stderr


def test_pruned_model_retrains_evaluates_exports_and_runs_in_onnx_runtime(trained_like,
                                                                          tmp_path):
    """Acceptance 4, through the CLI as the workflow runs it (TAO's prune → retrain loop)."""
    from effdet.data.convert import dataset_convert
    from effdet.data.synthetic import make_dataset
    from effdet.runtimes import open_detector
    from effdet.spec import load_spec

    data = make_dataset(tmp_path / "raw", 16, 128, 128, seed=5, val_fraction=0.25)
    dataset_convert(data.image_dir, data.train_json, tmp_path / "train", tag="train",
                    num_shards=1, workers=1)
    dataset_convert(data.image_dir, data.val_json, tmp_path / "val", tag="val", num_shards=1,
                    workers=1)
    effdet_cli("prune", "-m", str(trained_like), "-o", str(tmp_path / "pruned"), "-pth", "0.6",
               "-pg", "4", "-nf", "4", cwd=tmp_path)
    pruned = tmp_path / "pruned" / MODEL_FILE
    report = json.loads((tmp_path / "pruned" / REPORT_FILE).read_text())
    assert report["params"]["ratio"] < 0.9
    spec = tmp_path / "retrain.txt"
    spec.write_text(complete(f"""
training_config {{
  train_batch_size: 4 num_examples_per_epoch: 8 num_epochs: 2 checkpoint_period: 1
  iterations_per_loop: 1 learning_rate: 0.02 lr_warmup_epoch: 1 moving_average_decay: 0.9
  pruned_model_path: "{pruned}" checkpoint: "{pruned}"
}}
dataset_config {{
  num_classes: 5 image_size: "128,128" max_instances_per_image: 10
  training_file_pattern: "{tmp_path}/train/train-*"
  validation_file_pattern: "{tmp_path}/val/val-*"
  validation_json_file: "{data.val_json}"
}}
eval_config {{ eval_batch_size: 2 eval_samples: 4 eval_after_training: false
  min_score_thresh: 0.0 max_detections_per_image: 10 }}
"""))
    effdet_cli("train", "-e", str(spec), "-d", str(tmp_path / "retrain"), cwd=tmp_path)
    retrained = load_model(tmp_path / "retrain" / "model.tlt", KEY)
    assert retrained.architecture.widths == load_model(pruned, KEY).architecture.widths
    effdet_cli("evaluate", "-e", str(spec), "-m", str(tmp_path / "retrain" / "model.tlt"),
               "-o", str(tmp_path / "eval"), cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and 0.0 <= metrics["AP"] <= 1.0
    effdet_cli("export", "-m", str(tmp_path / "retrain" / "model.tlt"), "-e", str(spec),
               "-o", str(tmp_path / "export" / "model.etlt"), cwd=tmp_path)
    detector = open_detector(tmp_path / "export" / "model.onnx", None, load_spec(spec))
    image = np.random.default_rng(0).integers(0, 256, (100, 140, 3), dtype=np.uint8)
    found = detector.detect([image])[0]
    assert len(found) == 10  # no score floor: the full max_detections_per_image
    keras_found = open_detector(tmp_path / "retrain" / "model.tlt", KEY,
                                load_spec(spec)).detect([image])[0]
    np.testing.assert_allclose(np.sort(found.scores), np.sort(keras_found.scores), atol=1e-3)
