"""DVC: dvc.yaml is generated from the Snakemake DAG and reproduces the tiny demo.

One `dvc repro` in a fresh git repository holding a tiny copy of the workflow (~3 minutes) is
shared by the module: a second repro does nothing, metrics and plots show, and the models go
to a local remote and come back.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.workflow_support import (
    KEY,
    REPO,
    VENV_BIN,
    copy_workflow,
    run,
    scheduled_jobs,
    tiny_workflow,
)


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "dvc"), *args], root, check=check)


def git(root: Path, *args: str) -> None:
    run(["git", "-c", "user.name=effdet-test", "-c", "user.email=test@example.invalid",
         "-c", "init.defaultBranch=main", *args], root)


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> tuple[Path, str]:
    """A fresh repository with the tiny workflow after one `dvc repro`: (root, its output)."""
    root = tiny_workflow(tmp_path_factory.mktemp("workflow-dvc") / "repo")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tiny workflow")
    result = dvc(root, "repro")
    return root, result.stdout + result.stderr


def stages(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def test_committed_dvc_yaml_is_the_one_generated_from_the_dag():
    result = run([sys.executable, "scripts/make_dvc_yaml.py", "--check"], REPO, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_rule_change_makes_the_check_fail(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    rules = root / "rules" / "deploy.smk"
    rules.write_text(rules.read_text().replace("--force --log_file", "--log_file"))
    result = run([sys.executable, "scripts/make_dvc_yaml.py", "--check"], root, check=False)
    assert result.returncode == 1 and "out of date" in result.stderr
    assert "--force" in result.stdout  # the diff


def test_stages_are_the_snakemake_jobs(tmp_path):
    root = tiny_workflow(tmp_path / "wf")
    jobs = scheduled_jobs(root, "all")
    rules = [name.split("-")[1] for name in stages(root)]
    assert {rule: rules.count(rule) for rule in rules} == {
        rule: count for rule, count in jobs.items() if rule != "all"}
    # What the model key is never is: a command-line argument.
    text = (root / "dvc.yaml").read_text()
    assert KEY not in text and " -k " not in text


def test_repro_runs_every_stage(repro):
    root, output = repro
    for name in stages(root):
        assert f"Running stage '{name}'" in output, name
    demo = root / "results" / "demo"
    assert (demo / "retrain_eval" / "metrics.json").is_file()
    assert len(list((demo / "inference" / "images").glob("*.jpg"))) == 2
    lock = (root / "dvc.lock").read_text()
    assert KEY not in lock and KEY not in output


def test_second_repro_does_nothing(repro):
    root, _ = repro
    again = dvc(root, "repro")
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in again.stdout
    assert "Data and pipelines are up to date" in dvc(root, "status").stdout


def test_metrics_show(repro):
    root, _ = repro
    shown = json.loads(dvc(root, "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]
    for path in ("results/demo/eval/metrics.json", "results/demo/retrain_eval/metrics.json"):
        assert set(metrics[path]["data"]) >= {"AP", "AP50", "AR100"}, path
    live = metrics["results/demo/train/dvclive/metrics.json"]["data"]
    assert "total_loss" in live["train"]
    table = dvc(root, "metrics", "show").stdout
    assert "results/demo/retrain_eval/metrics.json" in table and "AP50" in table


def test_plots_show(repro, tmp_path):
    root, _ = repro
    shown = json.loads(dvc(root, "plots", "show", "--json").stdout)
    names = " ".join(shown.get("data", shown))
    for run_dir in ("train", "retrain"):
        assert f"results/demo/{run_dir}/dvclive/plots/metrics/train/total_loss.tsv" in names
    out = tmp_path / "plots"
    dvc(root, "plots", "show", "-o", str(out))
    page = (out / "index.html").read_text()
    assert "total_loss" in page


def test_push_pull_round_trip(repro, tmp_path):
    root, _ = repro
    assert dvc(root, "remote", "default").stdout.strip() == "local"
    dvc(root, "remote", "modify", "--local", "local", "url", str(tmp_path / "remote"))
    models = sorted((root / "results" / "demo").glob("*/model.*"))
    assert {p.parent.name for p in models} >= {"train", "prune", "retrain", "export", "engine"}
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in models}
    dvc(root, "push")
    # Everything cached goes: the outputs and the cache (uncached metrics stay, as in git).
    for stage in stages(root).values():
        for out in stage.get("outs", []):
            path = root / out
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(root / ".dvc" / "cache")
    dvc(root, "pull")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in models} == before
    assert "Data and pipelines are up to date" in dvc(root, "status").stdout
