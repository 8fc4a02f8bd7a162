"""Console progress lines: a task's start and end, and how far a loop is and how long it has left.

They are logged with `extra=PROGRESS`, so with --log_file they reach stdout as well as the file
(effdet/log.py): under Snakemake, the console of `make demo`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from effdet.log import PROGRESS

log = logging.getLogger("effdet")


def duration(seconds: float) -> str:
    """`45s`, `6m12s`, `2h05m`: short enough for a progress line, exact enough for an ETA."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


@contextmanager
def task_progress(task: str, log_file: str | Path) -> Iterator[None]:
    """`<task>: started` and `failed after …` name the log file; `done in …` ends it."""
    where = f" (log: {log_file})"
    log.info("%s: started%s", task, where, extra=PROGRESS)
    started = time.monotonic()
    try:
        yield
    except BaseException:
        log.info("%s: failed after %s%s", task, duration(time.monotonic() - started), where,
                 extra=PROGRESS)
        raise
    log.info("%s: done in %s", task, duration(time.monotonic() - started), extra=PROGRESS)


class Pace:
    """Items per second and the time left to `total` steps, measured from the second call of
    `done` on: the first one includes the start-up (tracing, compilation), which the remaining
    steps do not repeat. The time left is wall time, so pauses between the steps (periodic
    evaluations) count in it as they will again."""

    def __init__(self, total: int, items_per_step: int) -> None:
        self.total = total
        self.items_per_step = items_per_step
        self.origin: tuple[float, int] | None = None  # (wall time, step) after the first call
        self.busy_seconds = 0.0
        self.measured_steps = 0

    def done(self, step: int, count: int, seconds: float) -> None:
        """`count` steps ending at `step` took `seconds` of work."""
        if self.origin is None:
            self.origin = (time.monotonic(), step)
            return
        self.measured_steps += count
        self.busy_seconds += seconds

    def items_per_second(self) -> float | None:
        if not self.busy_seconds:
            return None
        return self.measured_steps * self.items_per_step / self.busy_seconds

    def seconds_left(self, step: int) -> float | None:
        if self.origin is None or step <= self.origin[1]:
            return None
        since, first = self.origin
        return (time.monotonic() - since) / (step - first) * (self.total - step)
