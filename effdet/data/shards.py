"""Write a set of TFRecord shards so that either all of them appear or none does.

Records go to hidden temporaries in the output directory (same file system, so the final
rename is cheap); `commit` renames them over any earlier shards of the same names and then
removes shards of the same tag left by a run with another shard count. Leaving the `with`
block without committing removes the temporaries and touches nothing else, so shards from
an earlier successful run survive a failed one. The renames themselves are not one atomic
step: a crash between them can leave a mix of old and new shards of the same count.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import TracebackType

from effdet.formats.atomic import remove_stale_temps, writing


def shard_name(tag: str, index: int, count: int) -> str:
    return f"{tag}-{index:05d}-of-{count:05d}.tfrecord"


class ShardWriter:
    def __init__(self, output_dir: Path, tag: str, num_shards: int) -> None:
        self._dir = output_dir
        self._tag = tag
        self.paths = [output_dir / shard_name(tag, i, num_shards) for i in range(num_shards)]
        self._temps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in self.paths]
        self._committed = False

    def __enter__(self) -> ShardWriter:
        # What a killed run left: its shards' and warnings file's temporaries.
        remove_stale_temps(self._dir, re.escape(self._tag)
                           + r"(?:-\d{5}-of-\d{5}\.tfrecord|_warnings\.json)")
        for temp in self._temps:
            temp.write_bytes(b"")
        return self

    def append(self, shard: int, record: bytes) -> None:
        # Opened per record: shards interleave, and holding one descriptor per shard
        # (up to --num_shards of them) could exceed the process's file limit.
        with writing(self.paths[shard]), open(self._temps[shard], "ab") as f:
            f.write(record)

    def commit(self) -> None:
        for temp, final in zip(self._temps, self.paths):
            os.replace(temp, final)
        self._committed = True
        current = {p.name for p in self.paths}
        pattern = re.compile(re.escape(self._tag) + r"-\d{5}-of-\d{5}\.tfrecord")
        for old in self._dir.iterdir():
            if pattern.fullmatch(old.name) and old.name not in current:
                old.unlink()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._committed:
            for temp in self._temps:
                temp.unlink(missing_ok=True)
