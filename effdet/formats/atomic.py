"""Write a file so that readers see either the old content or the complete new one."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from effdet.errors import EffdetError
from effdet.lifecycle import is_alive


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Report an OSError raised while writing `path` as one line naming it: a full disk's
    ENOSPC (or EDQUOT, EIO) from write() or fsync() carries no file name of its own."""
    try:
        yield
    except OSError as exc:
        raise EffdetError(f"{path}: cannot write: {exc.strerror or exc}") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield temp
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def remove_stale_temps(folder: Path, names: str = ".+") -> list[Path]:
    """Delete `folder`'s temporaries (`.<name>.tmp-<pid>`, `names` a regex for <name>) whose
    writing process is gone: what a kill -9 leaves behind. Returns the removed paths."""
    pattern = re.compile(rf"\.({names})\.(?:tmp|old)-(\d+)")
    removed = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match and int(match.group(2)) != os.getpid() and not is_alive(int(match.group(2))):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
