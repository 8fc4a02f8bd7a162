"""Serialise `tf.train.Example` messages without TensorFlow.

Importing TensorFlow's generated `example_pb2` loads all of TensorFlow (~2 s, 3000 modules)
into every converter worker, so the few messages involved are written in protobuf's wire
format by hand:

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }     // entry: key = 1, value = 2
    Feature   { oneof { BytesList = 1; FloatList = 2; Int64List = 3; } }
    *List     { repeated value = 1; }                  // floats and int64s packed

Features are written in sorted key order so the bytes are deterministic; any protobuf
parser reads them (map order is not significant).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

_LEN = 2  # wire type of length-delimited fields


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten-byte two's complement varints
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def bytes_feature(values: Iterable[bytes]) -> bytes:
    """An encoded `Feature` holding a BytesList."""
    return _field(1, b"".join(_field(1, v) for v in values))


def float_feature(values: Sequence[float]) -> bytes:
    """An encoded `Feature` holding a packed FloatList (stored as float32)."""
    packed = np.asarray(values, dtype="<f4").tobytes()
    return _field(2, _field(1, packed) if packed else b"")


def int64_feature(values: Iterable[int]) -> bytes:
    """An encoded `Feature` holding a packed Int64List."""
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(3, _field(1, packed) if packed else b"")


def serialize_example(features: Mapping[str, bytes]) -> bytes:
    """The serialised `Example` for encoded features keyed by name."""
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, features[key])) for key in sorted(features)
    )
    return _field(1, entries)
