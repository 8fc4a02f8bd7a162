"""One training per model_dir: an exclusive flock on a lock file inside it.

Two runs in one folder would interleave status.json lines and DVCLive rows and race on the
checkpoints. The kernel drops the lock when its holder exits, however it exits, so a
killed run never leaves the folder locked; the file itself stays and holds the last pid.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from effdet.errors import EffdetError

LOCK_FILE = ".effdet-train.lock"


@contextmanager
def model_dir_lock(model_dir: Path) -> Iterator[None]:
    path = model_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise EffdetError(f"{model_dir}: another effdet train (pid {holder}) is using this "
                              "model_dir; wait for it or train into another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
