"""Authenticated encryption of model files with a user key.

Layout: header | nonce (12) | AES-256-GCM ciphertext and tag; the header is authenticated too.
header = MAGIC | version | log2(scrypt N) | scrypt r | scrypt p | salt (16) | key check (8)
| header digest (4, version 2: SHA-256 of the fields before it).

The header is read before anything is authenticated, so only the scrypt cost this version
writes is accepted (a crafted header could otherwise demand gigabytes and minutes), and
version 2's unkeyed digest tells a damaged header from a wrong key. Version 1 files (no
digest) are still read.

The key goes through scrypt (memory-hard) into an encryption key and a key-check value, so a
wrong key is reported as such and a damaged file as damaged. Encryption is deterministic —
salt and nonce are derived from the plaintext (a synthetic IV: the same nonce can only recur
with the same plaintext, the one case where GCM's nonce reuse reveals nothing new) — so that
the same model saved twice gives the same bytes and DVC / Snakemake see nothing stale. The cost
is that two files with identical content can be recognised as such.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from effdet.errors import EffdetError
from effdet.key import check_new_key

MAGIC = b"EFFDETX"
VERSION = 2
_FIELDS = struct.Struct(f"<{len(MAGIC)}sBBBB16s8s")
_DIGEST_BYTES = 4
_HEADER_SIZES = {1: _FIELDS.size, 2: _FIELDS.size + _DIGEST_BYTES}
_NONCE_BYTES = 12
_SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P = 15, 8, 1  # 32 MiB, ~0.1 s per file
ACCEPTED_COSTS = frozenset({(_SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P)})


class DecryptionError(EffdetError):
    """Wrong key, damaged file, or not one of our encrypted files."""


def _derive(key: str, salt: bytes, log2_n: int, r: int, p: int) -> tuple[bytes, bytes]:
    material = Scrypt(salt=salt, length=64, n=2**log2_n, r=r, p=p).derive(key.encode("utf-8"))
    return material[:32], hashlib.sha256(material[32:]).digest()[:8]


def _digest(fields: bytes) -> bytes:
    return hashlib.sha256(fields).digest()[:_DIGEST_BYTES]


def encrypt(plaintext: bytes, key: str) -> bytes:
    check_new_key(key)
    salt = hashlib.sha256(b"effdet/salt\x00" + plaintext).digest()[:16]
    cipher_key, check = _derive(key, salt, _SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P)
    fields = _FIELDS.pack(MAGIC, VERSION, _SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P, salt, check)
    header = fields + _digest(fields)
    nonce = hmac.new(cipher_key, plaintext, hashlib.sha256).digest()[:_NONCE_BYTES]
    return header + nonce + AESGCM(cipher_key).encrypt(nonce, plaintext, header)


def decrypt(blob: bytes, key: str, source: str = "model file") -> bytes:
    if len(blob) <= len(MAGIC) or not blob.startswith(MAGIC):
        raise DecryptionError(f"{source}: not an effdet encrypted file (or truncated)")
    version = blob[len(MAGIC)]
    if version not in _HEADER_SIZES:
        raise DecryptionError(f"{source}: unsupported encryption version {version}")
    header_size = _HEADER_SIZES[version]
    if len(blob) < header_size + _NONCE_BYTES + 16:
        raise DecryptionError(f"{source}: the file is damaged (truncated)")
    _, _, log2_n, r, p, salt, check = _FIELDS.unpack_from(blob)
    header = blob[:header_size]
    if version >= 2 and header[_FIELDS.size:] != _digest(header[:_FIELDS.size]):
        raise DecryptionError(f"{source}: the file is damaged (header checksum mismatch)")
    if (log2_n, r, p) not in ACCEPTED_COSTS:
        raise DecryptionError(f"{source}: the file is damaged (unknown key-derivation "
                              "parameters in its header)")
    cipher_key, expected = _derive(key, salt, log2_n, r, p)
    if not hmac.compare_digest(check, expected):
        raise DecryptionError(f"{source}: wrong key")
    nonce = blob[header_size : header_size + _NONCE_BYTES]
    try:
        return AESGCM(cipher_key).decrypt(nonce, blob[header_size + _NONCE_BYTES :], header)
    except InvalidTag:
        raise DecryptionError(f"{source}: the file is damaged (authentication failed)") from None
