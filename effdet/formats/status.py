"""TAO's status.json: one JSON object a line, appended, as TAO's StatusLogger writes it.

Schema (nvidia_tao_tf1/cv/common/logging/logging.py, BaseLogger.write/StatusLogger): the
caller's data first, then `date` ("M/D/YYYY"), `time` ("H:M:S", both local and unpadded, as
TAO's), `status` (STARTED, RUNNING, SUCCESS, FAILURE, SKIPPED), `verbosity` (DEBUG … CRITICAL),
`message` when given, and the logger's current `categorical`, `graphical` and `kpi` dicts when
not empty. TAO's monitoring tools read these lines while the task runs, so each is flushed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from effdet.log import redact

STATUS_FILE = "status.json"
STATUSES = ("SUCCESS", "FAILURE", "STARTED", "RUNNING", "SKIPPED")
VERBOSITIES = ("DISABLE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class StatusLogger:
    """Appends TAO status lines to `directory`/status.json (created when missing)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / STATUS_FILE
        self.categorical: dict[str, Any] = {}
        self.graphical: dict[str, Any] = {}
        self.kpi: dict[str, Any] = {}

    def write(self, status: str, message: str | None = None,
              data: Mapping[str, Any] | None = None, verbosity: str = "INFO") -> dict[str, Any]:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        now = datetime.now()
        record = {**(data or {}),
                  "date": f"{now.month}/{now.day}/{now.year}",
                  "time": f"{now.hour}:{now.minute}:{now.second}",
                  "status": status, "verbosity": verbosity}
        if message:
            record["message"] = message
        for name in ("categorical", "graphical", "kpi"):
            if getattr(self, name):
                record[name] = dict(getattr(self, name))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return record


def coco_kpi(metrics: Mapping[str, Any], percent: bool = True) -> dict[str, float]:
    """Our COCO metrics under TAO's KPI names (coco_metric.py's metric_names). `percent`:
    x100 rounded to 4 places, as TAO's training (distributed_executer.py); otherwise as they
    are, as TAO's evaluate.py."""
    return {TAO_METRIC_NAMES.get(name, name): (float(round(float(metrics[name]) * 100, 4))
                                               if percent else float(metrics[name]))
            for name in COCO_METRICS if name in metrics}


# effdet.coco_metrics.METRIC_NAMES (COCOeval.stats order), of which TAO names three ARmax*.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
                "ARl")
TAO_METRIC_NAMES = {"AR1": "ARmax1", "AR10": "ARmax10", "AR100": "ARmax100"}


# Per task: TAO's STARTED, SUCCESS and interrupted messages (cv/efficientdet/scripts/*.py,
# executer/distributed_executer.py; gen_trt_engine: tao_deploy's cv/common/decorators.py).
TASK_MESSAGES = {
    "dataset_convert": ("Starting tfrecords conversion.", "Conversion finished successfully.",
                        "Dataset convert was interrupted"),
    "train": ("Starting EfficientDet training.", "Training finished successfully.",
              "Training was interrupted"),
    "evaluate": ("Starting EfficientDet evaluation.", "Evaluation finished successfully.",
                 "Evaluation was interrupted"),
    "prune": ("Starting EfficientDet pruning.", "Pruning finished successfully.",
              "Pruning was interrupted"),
    "inference": ("Starting EfficientDet inference.", "Inference finished successfully.",
                  "Inference was interrupted"),
    "export": ("Starting EfficientDet export.", "Export finished successfully.",
               "Export was interrupted"),
    "gen_trt_engine": ("Starting efficientdet_tf1 gen_trt_engine.",
                       "Gen_trt_engine finished successfully.",
                       "User/System interruption: Gen_trt_engine was interrupted"),
}


@contextmanager
def task_status(directory: Path | None, task: str) -> Iterator[StatusLogger | None]:
    """STARTED, then SUCCESS or FAILURE (with the error's message, secrets scrubbed), as TAO's
    scripts write around each task; nothing is written when `directory` is None."""
    if directory is None:
        yield None
        return
    started, finished, interrupted = TASK_MESSAGES[task]
    logger = StatusLogger(directory)
    logger.write("STARTED", started)
    try:
        yield logger
    except KeyboardInterrupt:
        logger.write("FAILURE", interrupted)
        raise
    except Exception as exc:
        logger.write("FAILURE", redact(str(exc)) or type(exc).__name__)
        raise
    logger.write("SUCCESS", finished)
