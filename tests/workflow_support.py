"""Helpers for the workflow tests: a tiny copy of the Snakemake/DVC workflow and runners.

`tiny_workflow(dest)` copies the workflow files (not .venv, results or logs) to `dest` and
shrinks the demo experiment: 16 generated 128×128 images, config/specs/tiny.txt's schedule
(2 epochs of 4 steps), so the whole DAG runs in a few minutes on 2 CPU cores. The experiment keeps
its name `demo`, so paths, rule names and dvc.yaml stages are the real ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
KEY = "workflow-test-key"
WORKFLOW_FILES = ["Snakefile", "rules", "config", "profiles/default", "scripts", "report",
                  "dvc.yaml", ".dvc/config", ".dvc/plots_template.html", ".dvc/.gitignore",
                  ".dvcignore", ".gitignore"]


def stub_bin() -> Path:
    """A folder with an `scontrol` that fails at once, first on the workflow's PATH.

    Every `snakemake` start loads the Slurm executor plugin, which runs `scontrol show config`
    (10 s timeout) when Slurm's commands are installed; with no slurmctld answering, each start
    would wait 10 s. Local runs never use Slurm, so the tests answer "no Slurm" at once.
    """
    folder = Path(tempfile.gettempdir()) / "effdet-workflow-tests-bin"
    stub = folder / "scontrol"
    if not stub.exists():
        folder.mkdir(exist_ok=True)
        temp = folder / f".scontrol.{os.getpid()}"
        temp.write_text("#!/bin/sh\nexit 1\n")
        temp.chmod(0o755)
        temp.replace(stub)
    return folder


def env() -> dict[str, str]:
    """The environment the workflow runs in: the venv first on PATH, the key, quiet TF."""
    return {"PATH": f"{stub_bin()}:{VENV_BIN}:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/tmp"), "EFFDET_KEY": KEY,
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8",
            "DVC_NO_ANALYTICS": "1"}


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source, target = REPO / name, dest / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def tiny_specs(dest: Path) -> None:
    tiny = (REPO / "config/specs/tiny.txt").read_text().replace("results/tiny/", "results/demo/")
    (dest / "config/specs/demo.txt").write_text(tiny)
    pruned = '  pruned_model_path: "results/demo/prune/model.tlt"\n' \
             '  checkpoint: "results/demo/prune/model.tlt"\n'
    retrain = re.sub(r"num_epochs: \d+", "num_epochs: 1",
                     tiny.replace("training_config {\n", "training_config {\n" + pruned, 1))
    (dest / "config/specs/demo_retrain.txt").write_text(retrain)


def tiny_workflow(dest: Path) -> Path:
    """A copy of the workflow whose demo experiment is tiny; dvc.yaml regenerated for it."""
    copy_workflow(dest)
    tiny_specs(dest)
    config_file = dest / "config/config.yaml"
    config = yaml.safe_load(config_file.read_text())
    demo = config["experiments"]["demo"]
    demo["dataset"]["synthetic"].update(num_images=16, width=128, height=128)
    demo["num_shards"] = 1
    demo["inference"] = {"num_images": 2, "batch_size": 2}
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    run([sys.executable, "scripts/make_dvc_yaml.py"], dest)
    return dest


def run(args: list[str], cwd: Path, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "snakemake"), *args], cwd, check=check)


def scheduled_jobs(cwd: Path, *targets: str) -> dict[str, int]:
    """rule → job count of a dry run (`snakemake -n`), from its job-stats table."""
    result = snakemake(cwd, "-n", *targets, "--quiet", "rules")
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        counts[fields[0]] = int(fields[1])
    counts.pop("total", None)
    return counts
