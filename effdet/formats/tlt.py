"""The .tlt model container: one encrypted, deterministic zip.

Members: `manifest.json` (format version, model variant, resolved hyper-parameters, class map,
epoch/step, every layer's width for pruned models) plus named binary members (Keras weights;
for checkpoints the optimizer and EMA state). Nothing in it is ever unpickled.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effdet.errors import EffdetError
from effdet.formats.atomic import atomic_write_bytes
from effdet.formats.crypto import decrypt, encrypt

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps keep the bytes reproducible


@dataclass(frozen=True)
class TltContents:
    manifest: dict[str, Any]
    members: dict[str, bytes] = field(default_factory=dict)


def pack_tlt(contents: TltContents) -> bytes:
    buffer = io.BytesIO()
    manifest = {"format_version": FORMAT_VERSION, **contents.manifest}
    with zipfile.ZipFile(buffer, "w") as archive:
        entries = {MANIFEST: json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")}
        entries.update(sorted(contents.members.items()))
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=6)
    return buffer.getvalue()


def unpack_tlt(data: bytes, source: str) -> TltContents:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise EffdetError(f"{source}: damaged model container ({exc})") from None
    if MANIFEST not in members:
        raise EffdetError(f"{source}: model container has no {MANIFEST}")
    manifest = json.loads(members.pop(MANIFEST))
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EffdetError(f"{source}: unsupported .tlt format version {version}")
    return TltContents(manifest=manifest, members=members)


def write_tlt(path: str | Path, contents: TltContents, key: str) -> None:
    atomic_write_bytes(path, encrypt(pack_tlt(contents), key))


def read_tlt(path: str | Path, key: str) -> TltContents:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise EffdetError(f"{path}: model file not found") from None
    except OSError as exc:
        raise EffdetError(f"{path}: cannot read model file ({exc.strerror})") from None
    return unpack_tlt(decrypt(blob, key, source=str(path)), source=str(path))
