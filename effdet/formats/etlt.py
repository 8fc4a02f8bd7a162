"""TAO's .etlt layout: little-endian int32 name length, the name, then the encrypted model.

TAO writes a name length of 0 for ONNX payloads; so do we. (TAO's own cipher is closed, so
only the layout is TAO's; the payload uses effdet's encryption.)
"""

from __future__ import annotations

import struct
from pathlib import Path

from effdet.errors import EffdetError
from effdet.formats.atomic import atomic_write_bytes
from effdet.formats.crypto import decrypt, encrypt

_LENGTH = struct.Struct("<i")


def write_etlt(path: str | Path, onnx_bytes: bytes, key: str) -> None:
    atomic_write_bytes(path, _LENGTH.pack(0) + encrypt(onnx_bytes, key))


def read_etlt(path: str | Path, key: str) -> bytes:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise EffdetError(f"{path}: file not found") from None
    if len(blob) < _LENGTH.size:
        raise EffdetError(f"{path}: not an .etlt file (too short)")
    (name_length,) = _LENGTH.unpack_from(blob)
    if not 0 <= name_length <= len(blob) - _LENGTH.size:
        raise EffdetError(f"{path}: not an .etlt file (bad header)")
    return decrypt(blob[_LENGTH.size + name_length :], key, source=str(path))
