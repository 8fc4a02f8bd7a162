"""effdet.formats.status: TAO's StatusLogger lines and the STARTED/SUCCESS/FAILURE frame."""

from __future__ import annotations

import pytest

from effdet.coco_metrics import METRIC_NAMES
from effdet.formats.status import COCO_METRICS, StatusLogger, coco_kpi, task_status
from effdet.log import redact, register_secret
from tao_status import status_lines


def test_lines_carry_taos_fields_and_the_loggers_current_kpi(tmp_path):
    logger = StatusLogger(tmp_path / "new")
    logger.write("STARTED", "Starting EfficientDet training.")
    logger.kpi = {"AP": 12.5}
    logger.write("RUNNING", "Evaluation metrics generated.")
    logger.write("SUCCESS", "Training finished successfully.")
    first, second, last = status_lines(tmp_path / "new" / "status.json")
    assert list(first) == ["date", "time", "status", "verbosity", "message"]  # TAO's order
    assert second["kpi"] == {"AP": 12.5} and last["kpi"] == {"AP": 12.5}  # sticky, as TAO's
    with pytest.raises(ValueError):
        logger.write("DONE")


def test_kpi_uses_taos_names_for_every_coco_metric():
    assert COCO_METRICS == METRIC_NAMES
    metrics = {name: 0.123456 for name in METRIC_NAMES}
    kpi = coco_kpi(metrics)
    assert kpi["ARmax1"] == kpi["AP"] == 12.3456 and "AR1" not in kpi and len(kpi) == 12
    assert coco_kpi(metrics, percent=False)["ARl"] == 0.123456


def test_task_status_frames_a_task_and_scrubs_the_key_from_failures(tmp_path):
    with task_status(tmp_path, "export"):
        pass
    register_secret("status-secret-key")
    with pytest.raises(RuntimeError):
        with task_status(tmp_path, "export"):
            raise RuntimeError("bad key status-secret-key")
    with pytest.raises(KeyboardInterrupt):
        with task_status(tmp_path, "export"):
            raise KeyboardInterrupt
    lines = status_lines(tmp_path / "status.json")
    assert [(r["status"], r["message"]) for r in lines] == [
        ("STARTED", "Starting EfficientDet export."), ("SUCCESS", "Export finished successfully."),
        ("STARTED", "Starting EfficientDet export."),
        ("FAILURE", redact("bad key status-secret-key")),
        ("STARTED", "Starting EfficientDet export."), ("FAILURE", "Export was interrupted")]
    assert "status-secret-key" not in (tmp_path / "status.json").read_text()
    with task_status(None, "export") as nothing:
        assert nothing is None
