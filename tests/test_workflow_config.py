"""Config validation: a bad config/config.yaml stops `snakemake` before any job, with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.workflow_support import VENV_BIN, copy_workflow, env, run, snakemake


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    root = copy_workflow(tmp_path_factory.mktemp("workflow-config"))
    # A small COCO dataset for the coco-experiment cases (files only need to exist).
    data = root / "data" / "mini"
    (data / "images").mkdir(parents=True)
    for split in ("train", "val"):
        (data / f"{split}.json").write_text(json.dumps({"images": [], "annotations": [],
                                                        "categories": []}))
    return root


def edited_config(root: Path, tmp_path: Path, edit) -> Path:
    """A copy of the workflow whose config/config.yaml went through `edit(config)`."""
    copy = tmp_path / "wf"
    shutil.copytree(root, copy)
    config_file = copy / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    edit(config)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def mini_experiment(config: dict, **changes) -> None:
    experiment = {
        "dataset": {"coco": {"image_dir": "data/mini/images", "train": "data/mini/train.json",
                             "val": "data/mini/val.json"}},
        "spec": "config/specs/demo.txt",
        "retrain_spec": "config/specs/demo_retrain.txt",
    }
    experiment.update(changes)
    config["experiments"]["mini"] = experiment
    config["run"] = ["mini"]


def demo(config: dict) -> dict:
    return config["experiments"]["demo"]


BAD_CONFIGS = {
    "unknown key": (
        lambda c: demo(c).update(num_shard=4),
        "config error: experiments.demo: unknown key 'num_shard' (allowed: "),
    "unknown top-level key": (
        lambda c: c.update(experiment={}),
        "config error: config: unknown key 'experiment'"),
    "wrong type": (
        lambda c: demo(c).update(num_shards="four"),
        "config error: experiments.demo.num_shards: 'four' is not of type 'integer'"),
    "wrong type in a section": (
        lambda c: demo(c)["prune"].update(threshold="high"),
        "config error: experiments.demo.prune.threshold: 'high' is not of type 'number'"),
    "prune threshold above 1": (
        lambda c: demo(c)["prune"].update(threshold=1.5),
        "config error: experiments.demo.prune.threshold: 1.5 is greater than the maximum of 1"),
    "threshold not a number": (
        lambda c: demo(c)["prune"].update(threshold=float("nan")),
        "config error: experiments.demo.prune.threshold: must be a finite number"),
    "long value cut short": (
        lambda c: demo(c).update(num_shards="x" * 5000),
        "config error: experiments.demo.num_shards: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… is not of "
        "type 'integer'"),
    "bad choice": (
        lambda c: demo(c)["export"].update(data_type="int4"),
        "config error: experiments.demo.export.data_type: 'int4' is not one of"),
    "missing key": (
        lambda c: demo(c).pop("retrain_spec"),
        "config error: experiments.demo: 'retrain_spec' is missing"),
    "missing annotation file": (
        lambda c: mini_experiment(c, dataset={"coco": {
            "image_dir": "data/mini/images", "train": "data/mini/train.json",
            "val": "data/mini/missing.json"}}),
        ("config error: experiments.mini.dataset.coco.val: file 'data/mini/missing.json' "
        "does not exist")),
    "missing image folder": (
        lambda c: mini_experiment(c, dataset={"coco": {
            "image_dir": "data/nowhere", "train": "data/mini/train.json",
            "val": "data/mini/val.json"}}),
        ("config error: experiments.mini.dataset.coco.image_dir: directory 'data/nowhere' "
        "does not exist")),
    "missing spec": (
        lambda c: demo(c).update(spec="config/specs/nope.txt"),
        "config error: experiments.demo.spec: file 'config/specs/nope.txt' does not exist"),
    "retrain spec not from the pruned model": (
        lambda c: mini_experiment(c),  # demo_retrain.txt starts from results/demo/prune
        ("config error: experiments.mini.retrain_spec: config/specs/demo_retrain.txt must set "
        'training_config.pruned_model_path: "results/mini/prune/model.tlt"')),
    "missing pretrained weights": (
        lambda c: demo(c).update(pretrained="weights/nope.h5"),
        "config error: experiments.demo.pretrained: 'weights/nope.h5' does not exist"),
    "pretrained weights the spec does not start from": (
        lambda c: demo(c).update(pretrained="data/mini/train.json"),
        ("config error: experiments.demo.pretrained: must be the spec's "
         "training_config.checkpoint (config/specs/demo.txt: 'none'")),
    "unknown experiment in run": (
        lambda c: c.update(run=["demo", "nosuch"]),
        "config error: run: 'nosuch' is not under experiments"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_config_stops_before_any_job_with_one_line(workflow_copy, tmp_path, case):
    edit, message = BAD_CONFIGS[case]
    root = edited_config(workflow_copy, tmp_path, edit)
    result = snakemake(root, "-n", "all", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    output = (result.stdout + result.stderr).splitlines()
    errors = [line for line in output if line.startswith("config error:")]
    assert len(errors) == 1 and errors[0].startswith(message), output
    # Nothing else: no traceback, no schema dump, no job scheduled.
    others = [line for line in output if line not in errors
              and not line.startswith("Using workflow specific profile")]
    assert others == [], output
    assert not (root / "results").exists()


def test_the_committed_config_and_a_coco_experiment_pass(workflow_copy, tmp_path):
    result = snakemake(workflow_copy, "-n", "all")
    assert "config error" not in result.stderr
    root = edited_config(workflow_copy, tmp_path, lambda c: None)
    spec = (root / "config/specs/demo_retrain.txt").read_text()
    (root / "config/specs/mini_retrain.txt").write_text(spec.replace("results/demo/prune",
                                                                     "results/mini/prune"))
    config_file = root / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    mini_experiment(config, retrain_spec="config/specs/mini_retrain.txt")
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(root, "-n", "all", "--quiet", "rules")
    assert "dataset_convert" in result.stdout and "demo_data" not in result.stdout


def test_pretrained_weights_are_an_input_of_train_for_snakemake_and_dvc(workflow_copy, tmp_path):
    root = edited_config(workflow_copy, tmp_path,
                         lambda c: demo(c).update(pretrained="weights/efficientnet_b0.hdf5"))
    (root / "weights").mkdir()
    (root / "weights/efficientnet_b0.hdf5").write_bytes(b"weights")
    spec = root / "config/specs/demo.txt"
    spec.write_text(spec.read_text().replace(
        "training_config {", 'training_config {\n  checkpoint: "weights/efficientnet_b0.hdf5"', 1))
    result = snakemake(root, "-n", "results/demo/train", "--quiet", "rules")
    assert "train" in result.stdout
    run([sys.executable, "scripts/make_dvc_yaml.py"], root)
    # make_dvc_yaml.py takes each stage's deps from the Snakemake job's input files.
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert "weights/efficientnet_b0.hdf5" in stages["demo-train"]["deps"]


@pytest.mark.parametrize("key", ["", "short"])
def test_empty_or_short_key_stops_before_any_job_touches_outputs(workflow_copy, key):
    model = workflow_copy / "results" / "demo" / "train" / "model.tlt"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"an earlier run's model")
    result = subprocess.run([str(VENV_BIN / "snakemake"), "--cores", "1", "all"],
                            cwd=workflow_copy, env={**env(), "EFFDET_KEY": key},
                            capture_output=True, text=True, timeout=300, check=False)
    output = (result.stdout + result.stderr).splitlines()
    errors = [line for line in output if line.startswith("config error: EFFDET_KEY:")]
    assert result.returncode == 1 and len(errors) == 1, output
    assert model.read_bytes() == b"an earlier run's model"
    shutil.rmtree(workflow_copy / "results")
