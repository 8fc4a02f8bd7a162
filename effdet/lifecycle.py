"""How an effdet process ends when it is told to, or when the workflow that started it dies.

SIGTERM (Slurm's scancel, `kill`, a watchdog) becomes a `Terminated` exception in the main
thread, so every `finally` runs - temporaries are removed, nothing is renamed into place - and
the CLI prints one line. Under the workflow, rules/common.smk exports EFFDET_PARENT
("host:pid" of Snakemake): a job whose Snakemake is gone (kill -9 re-parents it to init) sends
itself SIGTERM. The variable names the Snakemake process itself, not the job's parent, because
Snakemake runs each command through a shell that outlives it (so PR_SET_PDEATHSIG, which
watches the direct parent, would not fire); the host keeps a job on another machine (Slurm)
from watching a pid that means nothing there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
import time

PARENT_ENV = "EFFDET_PARENT"
POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; a KeyboardInterrupt so that `except Exception` blocks let it pass."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def handle_termination() -> None:
    """Turn SIGTERM into `Terminated`, and watch the workflow's Snakemake when under it."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    parent = watched_parent(os.environ.get(PARENT_ENV, ""))
    if parent is not None:
        threading.Thread(target=_watch, args=(parent,), name="effdet-parent-watch",
                         daemon=True).start()


def watched_parent(value: str) -> int | None:
    """The pid in a "host:pid" value when it is this host's, else None."""
    host, _, pid = value.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _watch(pid: int) -> None:
    while is_alive(pid):
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent exits (for pool workers, which a killed
    parent cannot stop). Elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
