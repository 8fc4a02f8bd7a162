"""TAO's status.json schema, written from its StatusLogger
(nvidia_tao_tf1/cv/common/logging/logging.py) and the training hook that fills it
(cv/efficientdet/hooks/logging_hook.py), to validate the lines effdet writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

STATUSES = {"SUCCESS", "FAILURE", "STARTED", "RUNNING", "SKIPPED"}
VERBOSITIES = {"DISABLE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
DATE = re.compile(r"\d{1,2}/\d{1,2}/\d{4}")  # "{month}/{day}/{year}", unpadded
TIME = re.compile(r"\d{1,2}:\d{1,2}:\d{1,2}")  # "{hour}:{minute}:{second}", unpadded
TIMEDELTA = re.compile(r"(\d+ days?, )?\d+:\d\d:\d\d(\.\d{6})?")  # str(datetime.timedelta)
# The COCO names TAO reports (utils/coco_metric.py's metric_names).
COCO_NAMES = {"AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1", "ARmax10", "ARmax100",
              "ARs", "ARm", "ARl"}


def status_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of `path`, each checked against TAO's schema."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records, f"{path} is empty"
    for record in records:
        check_record(record)
    return records


def check_record(record: dict[str, Any]) -> None:
    assert DATE.fullmatch(record["date"]), record
    assert TIME.fullmatch(record["time"]), record
    assert record["status"] in STATUSES, record
    assert record["verbosity"] in VERBOSITIES, record
    assert isinstance(record.get("message", ""), str), record
    for group in ("kpi", "graphical", "categorical"):
        if group in record:
            assert isinstance(record[group], dict) and record[group], record
    for value in record.get("kpi", {}).values():
        assert isinstance(value, (int, float)), record
    if "epoch" in record:  # the training hook's monitor data
        assert isinstance(record["epoch"], int) and isinstance(record["max_epoch"], int)
        assert TIMEDELTA.fullmatch(record["time_per_epoch"]), record
        assert TIMEDELTA.fullmatch(record["eta"]), record
        assert set(record["graphical"]) == {"loss", "learning_rate"}, record
