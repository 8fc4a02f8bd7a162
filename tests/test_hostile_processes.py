"""Hostile and unlucky process events (issue 13, points 6-8): two trainings in one model_dir,
SIGTERM, a killed Snakemake, and dataset_convert's workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_train import KEY, TINY, data, write_spec  # noqa: F401 (data is a fixture)

from effdet.data import convert
from effdet.errors import EffdetError
from effdet.formats.tlt import read_tlt
from effdet.lifecycle import PARENT_ENV
from effdet.tasks.train import train

REPO = Path(__file__).resolve().parents[1]


def wait_for(condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours (reaped later) counts as gone; so does one reaped meanwhile.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if ".tmp-" in p.name]


@pytest.fixture
def long_run(data, tmp_path):  # noqa: F811
    """A CLI training (tiny network) that runs far longer than any test waits."""
    spec = write_spec(tmp_path / "spec.txt", data)
    spec.write_text(spec.read_text().replace("num_epochs: 3", "num_epochs: 500"))
    model_dir, pid_file = tmp_path / "model", tmp_path / "pid"
    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent(f"""\
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        import effdet.tasks.train
        from tests.test_train import TINY
        effdet.tasks.train.get_variant = lambda name: TINY
        from effdet.cli import main
        if __name__ == "__main__":
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            sys.exit(main(["train", "-e", {str(spec)!r}, "-d", {str(model_dir)!r},
                           "-k", {KEY!r}]))
        """))
    env = {k: v for k, v in os.environ.items() if k not in ("EFFDET_KEY", "EFFDET_DEBUG")}
    return {"spec": spec, "model_dir": model_dir, "pid_file": pid_file,
            "command": [sys.executable, str(launcher)], "env": {**env, "PYTHONPATH": str(REPO)}}


def test_lock_sigterm_and_a_killed_snakemake(long_run, tmp_path):
    model_dir = long_run["model_dir"]
    first = model_dir / "model.epoch-1.tlt"
    process = subprocess.Popen(long_run["command"], env=long_run["env"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(first.exists, "first checkpoint")
        # 6. A second training into the same folder: one line naming the holder.
        with pytest.raises(EffdetError, match=rf"another effdet train \(pid {process.pid}\)"):
            train(long_run["spec"], model_dir, KEY, variant=TINY)
        # 7. SIGTERM: one line, exit 143, nothing half-written.
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("effdet: error: terminated"), stderr[-2000:]
    assert "Traceback" not in stderr and temporaries(model_dir) == []
    read_tlt(first, KEY)

    # 7. kill -9 of "Snakemake" (which runs the job through a shell, as Snakemake does): the
    # training ends too. 8. The resumed run first removes a checkpoint temporary of a kill.
    stale = model_dir / ".model.epoch-9.tlt.tmp-999999999"
    stale.write_bytes(b"half a checkpoint")
    log = tmp_path / "train.log"
    job = f"{' '.join(long_run['command'])} 2> {log}; echo finished"
    snakemake = subprocess.Popen(
        [sys.executable, "-c", "import os, socket, subprocess, sys, time\n"
         f"os.environ[{PARENT_ENV!r}] = f'{{socket.gethostname()}}:{{os.getpid()}}'\n"
         "subprocess.Popen(['bash', '-c', sys.argv[1]])\ntime.sleep(600)", job],
        env=long_run["env"])
    try:
        wait_for(lambda: log.exists() and "resuming from" in log.read_text(), "resumed run")
        trainer = int(long_run["pid_file"].read_text())
        assert not stale.exists()
        snakemake.kill()
        snakemake.wait()
        wait_for(lambda: not is_running(trainer), "end of the orphaned training", timeout=30)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    lines = log.read_text().strip().splitlines()
    assert lines[-1].startswith("effdet: error: terminated"), lines[-20:]
    assert "Traceback" not in log.read_text() and temporaries(model_dir) == []


def test_parent_of_another_host_is_not_watched():
    from effdet.lifecycle import watched_parent

    assert watched_parent(f"{socket.gethostname()}:123") == 123
    assert watched_parent("some-other-node:123") is None
    assert watched_parent("") is None


# --- 8. dataset_convert's workers --------------------------------------------------------


def test_convert_workers_ignore_ctrl_c(capfd):
    # Ctrl-C at once, while the workers may still be starting: they must ignore it from birth.
    with convert._mapper(2, 100) as map_:
        pool = map_.func.__self__
        workers = [p.pid for p in pool._pool]
        for pid in workers:
            os.kill(pid, signal.SIGINT)
        assert list(map_(abs, [-1, -2, -3])) == [1, 2, 3]
        for pid in workers:
            os.kill(pid, signal.SIGINT)
        time.sleep(1.0)
        assert [p.pid for p in pool._pool] == workers and list(map_(abs, [-4])) == [4]
    assert "Traceback" not in capfd.readouterr().err


def test_convert_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "convert_parent.py"
    script.write_text(textwrap.dedent(f"""\
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from effdet.data import convert
        if __name__ == "__main__":
            with convert._mapper(2, 100) as map_:
                list(map_(abs, [1, 2, 3, 4]))
                print(*[p.pid for p in map_.func.__self__._pool], flush=True)
                time.sleep(600)
        """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2
        parent.kill()
        parent.wait()
        wait_for(lambda: not any(is_running(pid) for pid in workers), "end of the workers",
                 timeout=20)
    finally:
        parent.kill()


def test_next_convert_removes_shard_temporaries_of_a_killed_run(tiny_coco):
    coco = tiny_coco(2)
    out = coco.out
    out.mkdir(parents=True, exist_ok=True)
    leftover = out / ".train-00000-of-00001.tfrecord.tmp-999999999"
    leftover.write_bytes(b"half a shard")
    unrelated = out / ".other-00000-of-00001.tfrecord.tmp-999999999"
    unrelated.write_bytes(b"another tag's")
    convert.dataset_convert(coco.image_dir, coco.write(), out, tag="train", num_shards=1,
                            workers=1)
    assert not leftover.exists() and unrelated.exists()
