"""TFRecord framing without TensorFlow.

Each record is `uint64 length | uint32 masked_crc32c(length) | data | uint32
masked_crc32c(data)`, all little-endian, as TensorFlow's record writer produces.
"""

from __future__ import annotations

import struct

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """`data` framed as one TFRecord, ready to append to a .tfrecord file."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (
            length,
            struct.pack("<I", _masked_crc(length)),
            data,
            struct.pack("<I", _masked_crc(data)),
        )
    )
