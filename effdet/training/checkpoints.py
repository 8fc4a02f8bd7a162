"""Epoch checkpoints in a model directory: naming, finding the latest, rotation."""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT = re.compile(r"^model\.epoch-(\d+)\.tlt$")
FINAL = "model.tlt"


def checkpoint_path(model_dir: Path, epoch: int) -> Path:
    return model_dir / f"model.epoch-{epoch}.tlt"


def checkpoints(model_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every complete checkpoint, oldest first (temporaries never match)."""
    found = []
    if model_dir.is_dir():
        for path in model_dir.iterdir():
            match = CHECKPOINT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def rotate(model_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; returns the deleted paths."""
    old = [path for _, path in checkpoints(model_dir)[:-keep]] if keep > 0 else []
    for path in old:
        path.unlink(missing_ok=True)
    return old
