"""The `slurm` Snakemake profile against a real single-node Slurm cluster.

scripts/slurm_single_node.sh starts munged, slurmctld and slurmd from Debian's slurm-wlm and
munge packages (installed with apt-get when missing), with a count-only `gpu` gres. Then, in a
copy of the repository as a fresh clone would have it:

* `snakemake --profile slurm` runs the demo's first steps (demo_data, dataset_convert for
  train and val) as Slurm jobs: Snakemake reports their Slurm job ids, Slurm knows them as
  COMPLETED with the rules' CPUs/memory/time, their logs are in logs/slurm/, outputs exist;
* GPU and multi-worker requests reach Slurm as the profile's comments describe: gpu=1 → a
  GPU on the job, gpu=0 → none, and `mpi`/`nodes`/`tasks_per_node`/`gres` → an srun step
  with two tasks (one per GPU) in which effdet resolves a two-worker cluster.

Needs root (the daemons, /etc/slurm) and either the packages or apt-get; skipped otherwise.
The cluster is stopped afterwards; a lock file serialises concurrent runs on one machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
START = REPO / "scripts" / "slurm_single_node.sh"
STOP = REPO / "scripts" / "slurm_single_node_stop.sh"
LOCK = Path("/tmp/effdet-slurm-test.lock")
KEY = "slurm-test-key"
# The profile waits 20 s before its first status check; 3 s keeps the test short.
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "3"]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")


needs_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="starting slurmctld/slurmd and writing /etc/slurm needs root on Linux")
needs_packages = pytest.mark.skipif(
    not shutil.which("apt-get") and not shutil.which("sbatch"),
    reason="needs Debian's slurm-wlm and munge packages, or apt-get to install them")


def _env() -> dict[str, str]:
    """The venv first on PATH (sbatch exports it, so the jobs find effdet and python), the model
    key (Snakefile `envvars`), no SLURM_* variables from an enclosing job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", EFFDET_KEY=KEY,
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return env


def _run(args: list[str], cwd: Path, timeout: float, log: Path) -> subprocess.CompletedProcess:
    """Run with output to `log` (a pipe could be held open by a daemon the command starts)."""
    with log.open("w") as out:
        result = subprocess.run(args, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout, check=False)
    result.stdout = log.read_text()
    return result


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    lock = LOCK.open("a")
    deadline = time.monotonic() + 600
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"another test run has held {LOCK} (the test Slurm cluster) for 10 min")
            time.sleep(2)
    log = tmp_path_factory.mktemp("slurm") / "start.log"
    try:
        try:
            started = _run(["bash", str(START), "--install"], REPO, 300, log)
        except BaseException:
            subprocess.run(["bash", str(STOP)], check=False, timeout=120)
            raise
        if started.returncode == 3:  # a real Slurm installation: left alone
            pytest.skip(started.stdout.strip().splitlines()[-1])
        if started.returncode != 0:
            subprocess.run(["bash", str(STOP)], check=False, timeout=120)
            pytest.fail(f"{START.name} exited {started.returncode}:\n{started.stdout[-4000:]}")
        try:
            yield
        finally:
            subprocess.run(["bash", str(STOP)], check=False, timeout=120)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files as a fresh clone has them: git's tracked and not-ignored files
    (symlinks kept), without .venv, results, logs or .snakemake."""
    dest = tmp_path_factory.mktemp("clone")
    if shutil.which("git") and (REPO / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True).stdout
        names = sorted({n for n in listed.decode().split("\0") if n})
    else:  # an unpacked archive: everything but local state
        skip = {".venv", ".git", "results", "logs", ".snakemake", "__pycache__", ".pytest_cache"}
        names = []
        for root, dirs, files in os.walk(REPO):  # symlinked folders land in dirs, not followed
            dirs[:] = [d for d in dirs if d not in skip]
            here = Path(root).relative_to(REPO)
            names += [str(here / n) for n in files]
            names += [str(here / d) for d in dirs if (Path(root) / d).is_symlink()]
    for name in names:
        source, target = REPO / name, dest / name
        if not source.is_symlink() and not source.is_file():
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


def _scontrol(job_id: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                          check=True).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", text))


def _submitted(output: str) -> dict[str, tuple[str, Path]]:
    """Snakemake job id → (Slurm job id, Slurm log) from the plugin's submission lines."""
    return {sm: (slurm, Path(log)) for sm, slurm, log in SUBMITTED.findall(output)}


def _requested(output: str) -> dict[str, dict[str, int]]:
    """Snakemake job id → its threads, mem_mb and runtime as Snakemake printed them."""
    jobs = {}
    for block in output.split("\nrule ")[1:]:
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.MULTILINE)
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        if jobid and resources:
            threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
            values = dict(re.findall(r"(\w+)=(\d+)", resources.group(1)))
            jobs[jobid.group(1)] = {"threads": int(threads.group(1)) if threads else 1,
                                    "mem_mb": int(values["mem_mb"]),
                                    "runtime": int(values["runtime"])}
    return jobs


def _time_limit(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


def test_profile_is_found_from_the_repo_root(clone: Path) -> None:
    """`--profile slurm` from the root: the symlink to profiles/slurm, the workflow profile on
    top, the rules' threads/mem_mb/runtime as Slurm resources, the partition variable."""
    assert (clone / "slurm").is_symlink() and (clone / "slurm" / "config.yaml").is_file()
    env = {**_env(), "EFFDET_SLURM_PARTITION": "gpu-a100"}
    result = subprocess.run([str(VENV_BIN / "snakemake"), "--profile", "slurm", "-n",
                             "results/demo/tfrecords/train"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in out
    convert = out[out.index("rule dataset_convert:"):]
    resources = convert[convert.index("resources:"):].splitlines()[0]
    for expected in ("mem_mb=", "runtime=", "cpus_per_task=", "slurm_partition=gpu-a100"):
        assert expected in resources, resources


@needs_root
@needs_packages
def test_demo_steps_run_as_slurm_jobs(slurm_cluster: None, clone: Path) -> None:
    targets = ["results/demo/tfrecords/train", "results/demo/tfrecords/val"]
    result = _run([str(VENV_BIN / "snakemake"), "--profile", "slurm", *FAST_POLL, *targets],
                  clone, 240, clone.parent / "snakemake-demo.log")
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in result.stdout
    # slurm-no-account: no account guessing on the console (effdet/slurm_account.py)
    assert "account" not in result.stdout.lower(), result.stdout[-6000:]

    jobs = _submitted(result.stdout)
    requested = _requested(result.stdout)
    assert len(jobs) == 3, result.stdout[-6000:]
    rules = {}
    for jobid, (slurm_id, log) in jobs.items():
        info = _scontrol(slurm_id)
        assert info["JobState"] == "COMPLETED", (slurm_id, info)
        assert info["ExitCode"] == "0:0"
        rule = info["Comment"].split("_wildcards_")[0].removeprefix("rule_")
        rules[rule] = rules.get(rule, 0) + 1
        # the profile's log folder, kept after success
        assert log.is_relative_to(clone / "logs" / "slurm" / f"rule_{rule}"), log
        assert log.name == f"{slurm_id}.log" and log.is_file(), log
        assert "Finished jobid" in log.read_text()
        # the rule's threads, mem_mb and runtime became the job's CPUs, memory and time limit
        want = requested[jobid]
        assert info["NumCPUs"] == str(want["threads"]), (rule, want, info)
        assert info["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, want, info)
        assert info["TimeLimit"] == _time_limit(want["runtime"]), (rule, want, info)
    assert rules == {"demo_data": 1, "dataset_convert": 2}

    for split in ("train", "val"):
        shards = sorted((clone / "results/demo/tfrecords" / split).glob("*.tfrecord"))
        assert shards and all(s.stat().st_size > 0 for s in shards), shards
        assert (clone / f"logs/demo/dataset_convert_{split}.log").is_file()
    assert json.loads((clone / "results/demo/raw/annotations/val.json").read_text())["images"]


PROBES = r'''
# A GPU job, a CPU job, and a two-worker job launched like the profile's multi-node recipe.
rule all:
    input: "gpu.txt", "cpu.txt", "workers.txt"

rule gpu_probe:
    output: "gpu.txt"
    resources: gpu=1, mem_mb=200, runtime=5
    shell: "echo $SLURM_JOB_ID ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"

rule cpu_probe:
    output: "cpu.txt"
    resources: gpu=0, mem_mb=200, runtime=5
    shell: "echo $SLURM_JOB_ID ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"

rule workers_probe:
    output: "workers.txt"
    threads: 1
    resources: gpu=0, mem_mb=3000, runtime=5, mpi=""
    shell: "{resources.mpi} python workers.py >> {output}"
'''

WORKER = r'''
import json, os
from effdet.training.strategy import _slurm_multi_task, slurm_cluster_resolver
resolver = slurm_cluster_resolver()
cluster = resolver.cluster_spec().as_dict()  # also sets the task and CUDA_VISIBLE_DEVICES
print(json.dumps({"job": os.environ["SLURM_JOB_ID"], "multi": _slurm_multi_task(),
                  "task": [resolver.task_type, resolver.task_id],
                  "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "cluster": cluster}),
      flush=True)
'''


@needs_root
@needs_packages
def test_gpu_and_multi_worker_requests_reach_slurm(slurm_cluster: None, clone: Path,
                                                   tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(PROBES)
    (tmp_path / "workers.py").write_text(WORKER)
    # the profile's multi-node recipe on one node: 1 node x 2 (count-only) GPUs, a task per GPU
    recipe = ["--set-resources", "workers_probe:mpi='srun --ntasks-per-node=2'",
              "workers_probe:nodes=1", "workers_probe:tasks_per_node=2",
              "workers_probe:gres='gpu:2'", "workers_probe:cpus_per_task=1"]
    result = _run([str(VENV_BIN / "snakemake"), "--profile", str(clone / "slurm"), "--verbose",
                   *FAST_POLL, *recipe], tmp_path, 180, tmp_path / "snakemake.log")
    assert result.returncode == 0, result.stdout[-6000:]
    sbatch = {m.group(1): m.group(0) for m in
              re.finditer(r"sbatch call: .*?--comment rule_(\w+).*", result.stdout)}

    gpu_job, gpu_seen = (tmp_path / "gpu.txt").read_text().split()
    assert "--gpus=1" in sbatch["gpu_probe"]
    assert _scontrol(gpu_job).get("TresPerJob") == "gres:gpu:1"
    assert gpu_seen == "0"  # Slurm handed the job GPU 0 (count-only: no device behind it)

    cpu_job, cpu_seen = (tmp_path / "cpu.txt").read_text().split()
    assert "--gpus" not in sbatch["cpu_probe"] and "--gres" not in sbatch["cpu_probe"]
    assert "TresPerJob" not in _scontrol(cpu_job) and cpu_seen == "none"

    line = sbatch["workers_probe"]
    for flag in ("--nodes=1", "--ntasks-per-node=2", "--gres=gpu:2", "--cpus-per-task=1"):
        assert flag in line, line
    workers = [json.loads(x) for x in (tmp_path / "workers.txt").read_text().splitlines()]
    assert len(workers) == 2 and all(w["multi"] for w in workers), workers
    assert sorted(w["task"][1] for w in workers) == [0, 1]
    assert all(len(w["cluster"]["worker"]) == 2 for w in workers), workers
    # TF's SlurmClusterResolver gave each task its own GPU of the node's two
    assert sorted(w["gpus"] for w in workers) == ["0", "1"], workers
    assert _scontrol(workers[0]["job"])["NumTasks"] == "2"
