"""Encrypted containers: round trips, wrong key vs damage, reproducible bytes, atomic writes."""

from __future__ import annotations

import struct

import pytest

from effdet.errors import EffdetError
from effdet.formats.atomic import atomic_path
from effdet.formats.crypto import DecryptionError, decrypt, encrypt
from effdet.formats.etlt import read_etlt, write_etlt
from effdet.formats.tlt import TltContents, read_tlt, write_tlt

KEY = "nvidia_tlt"


def test_encrypt_round_trip_and_determinism():
    data = b"weights" * 1000
    blob = encrypt(data, KEY)
    assert data not in blob
    assert decrypt(blob, KEY) == data
    assert encrypt(data, KEY) == blob
    assert encrypt(data + b"!", KEY)[-64:] != blob[-64:]


def test_wrong_key_and_damage_are_told_apart():
    blob = encrypt(b"payload" * 100, KEY)
    with pytest.raises(DecryptionError, match="wrong key"):
        decrypt(blob, "other-key")
    damaged = bytearray(blob)
    damaged[-20] ^= 0x01
    with pytest.raises(DecryptionError, match="damaged"):
        decrypt(bytes(damaged), KEY)
    with pytest.raises(DecryptionError, match="not an effdet"):
        decrypt(b"PK\x03\x04 plain zip", KEY)


def test_tlt_round_trip_is_reproducible(tmp_path):
    contents = TltContents({"model_name": "efficientdet-d0", "epoch": 3},
                           {"model.weights.h5": b"\x00\x01" * 50, "ema.h5": b"\x02" * 10})
    first, second = tmp_path / "a.tlt", tmp_path / "b.tlt"
    write_tlt(first, contents, KEY)
    write_tlt(second, contents, KEY)
    assert first.read_bytes() == second.read_bytes()
    loaded = read_tlt(first, KEY)
    assert loaded.manifest["epoch"] == 3 and loaded.manifest["format_version"] == 1
    assert loaded.members == contents.members
    assert b"efficientdet-d0" not in first.read_bytes()
    with pytest.raises(EffdetError, match="wrong key"):
        read_tlt(first, "bad")
    with pytest.raises(EffdetError, match="not found"):
        read_tlt(tmp_path / "missing.tlt", KEY)


def test_etlt_layout_is_taos(tmp_path):
    path = tmp_path / "model.etlt"
    write_etlt(path, b"onnx-bytes", KEY)
    raw = path.read_bytes()
    assert struct.unpack("<i", raw[:4]) == (0,)
    assert read_etlt(path, KEY) == b"onnx-bytes"


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_bytes(b"partial")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as temp:
        temp.write_bytes(b"done")
    assert target.read_bytes() == b"done" and list(tmp_path.iterdir()) == [target]
