"""Where training reports go: TensorBoard scalars, DVCLive metrics and plots, TAO status lines.

Only the chief worker creates a `TrainingLog`. DVCLive is optional (the `workflow` extra):
without it the other two outputs are still written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tensorflow as tf

log = logging.getLogger("effdet")

STATUS_FILE = "status.json"
DVCLIVE_DIR = "dvclive"


class TrainingLog:
    def __init__(self, model_dir: Path, max_epoch: int, resume: bool):
        self.model_dir = model_dir
        self.max_epoch = max_epoch
        self.writer = tf.summary.create_file_writer(str(model_dir / "logs"))
        self.live = _open_dvclive(model_dir / DVCLIVE_DIR, resume)

    def scalars(self, step: int, group: str, values: Mapping[str, float]) -> None:
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"{group}/{name}", value)
        self.writer.flush()
        if self.live is not None:
            self.live.step = step
            for name, value in values.items():
                self.live.log_metric(f"{group}/{name}", value)
            self.live.make_summary()

    def status(self, status: str, message: str, **extra: Any) -> None:
        """One TAO-style JSON status line in MODEL_DIR/status.json."""
        now = datetime.now(timezone.utc)
        record = {"date": now.strftime("%m/%d/%Y"), "time": now.strftime("%H:%M:%S"),
                  "status": status, "verbosity": "INFO", "message": message,
                  "max_epoch": self.max_epoch, **extra}
        with open(self.model_dir / STATUS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.writer.close()
        if self.live is not None:
            self.live.end()


def _open_dvclive(directory: Path, resume: bool) -> Any:
    try:
        from dvclive import Live
    except ImportError:
        log.info("dvclive is not installed: no DVCLive metrics (pip install dvclive)")
        return None
    # No dvc.yaml edits and no DVC experiment: the files are plain outputs of the train step.
    return Live(dir=str(directory), resume=resume, report=None, save_dvc_exp=False, dvcyaml=None)
