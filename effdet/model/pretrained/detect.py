"""Which kind of weights a path holds, told by content rather than by suffix."""

from __future__ import annotations

import zipfile
from pathlib import Path

from effdet.errors import EffdetError
from effdet.model.pretrained.automl import checkpoint_prefix

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
TLT, HDF5, KERAS, TF_CHECKPOINT = "tlt", "hdf5", "keras", "tf_checkpoint"


def detect_format(path: Path) -> str:
    """One of TLT, HDF5, KERAS, TF_CHECKPOINT; a one-line error for anything else."""
    if checkpoint_prefix(path) is not None:
        return TF_CHECKPOINT
    if not path.is_file():
        raise EffdetError(f"{path}: no such weights file or TensorFlow checkpoint")
    with path.open("rb") as handle:
        head = handle.read(8)
    if head == HDF5_SIGNATURE:
        return HDF5
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" in archive.namelist():
                return KERAS
        raise EffdetError(f"{path}: a zip file but not a Keras model (.keras)")
    # Our .tlt is encrypted: no readable header; reading it with the key tells for sure.
    return TLT
