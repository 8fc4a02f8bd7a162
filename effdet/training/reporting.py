"""Where training reports go: TensorBoard scalars, DVCLive metrics and plots, TAO status lines.

Only the chief worker creates a `TrainingLog`. DVCLive is optional (the `workflow` extra):
without it the other two outputs are still written.

A resumed run repeats the steps after its checkpoint, so it first drops the DVCLive rows
logged for them by the interrupted run: every step keeps one row. status.json is TAO's
append-only event log and keeps the interrupted run's lines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import tensorflow as tf

from effdet.formats.atomic import atomic_write_bytes
from effdet.formats.status import StatusLogger, coco_kpi

log = logging.getLogger("effdet")

DVCLIVE_DIR = "dvclive"


class TrainingLog:
    def __init__(self, model_dir: Path, max_epoch: int, resume_step: int = 0):
        self.model_dir = model_dir
        self.max_epoch = max_epoch
        self.writer = tf.summary.create_file_writer(str(model_dir / "logs"))
        if resume_step:
            drop_rows(model_dir / DVCLIVE_DIR, first_step=resume_step + 1)
        self.live = _open_dvclive(model_dir / DVCLIVE_DIR, resume=resume_step > 0)
        self.status_log = StatusLogger(model_dir)

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

    def status(self, status: str, message: str | None = None, **data: Any) -> None:
        """One TAO status line in MODEL_DIR/status.json."""
        self.status_log.write(status, message, data)

    def epoch_status(self, epoch: int, seconds: float, loss: float, learning_rate: float) -> None:
        """TAO's end-of-epoch line (hooks/logging_hook.py's write_status_json)."""
        self.status_log.graphical = {"loss": loss, "learning_rate": learning_rate}
        self.status("RUNNING", epoch=epoch, max_epoch=self.max_epoch,
                    time_per_epoch=str(timedelta(seconds=seconds)),
                    eta=str(timedelta(seconds=(self.max_epoch - epoch) * seconds)))

    def evaluation(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Eval scalars at `step` (replacing any an interrupted evaluation logged) and TAO's
        KPI line: the COCO metrics x100 (executer/distributed_executer.py)."""
        drop_rows(self.model_dir / DVCLIVE_DIR, first_step=step, group="eval")
        self.scalars(step, "eval", {k: float(metrics[k]) for k in ("AP", "AP50", "AP75")})
        self.status_log.kpi = coco_kpi(metrics)
        self.status("RUNNING", "Evaluation metrics generated.")

    def close(self) -> None:
        self.writer.close()
        if self.live is not None:
            self.live.end()


def drop_rows(live_dir: Path, first_step: int, group: str | None = None) -> None:
    """Remove the DVCLive plot rows at `first_step` and later (of `group` only, if given)."""
    plots = live_dir / "plots" / "metrics"
    if group is not None:
        plots = plots / group
    for table in sorted(plots.rglob("*.tsv")) if plots.is_dir() else ():
        header, *rows = table.read_text(encoding="utf-8").splitlines()
        column = header.split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[column]) < first_step]
        if len(kept) < len(rows):
            atomic_write_bytes(table, "".join(f"{line}\n" for line in [header, *kept]).encode())


def _open_dvclive(directory: Path, resume: bool) -> Any:
    try:
        from dvclive import Live
    except ImportError:
        log.info("dvclive is not installed: no DVCLive metrics (pip install dvclive)")
        return None
    # No dvc.yaml edits and no DVC experiment: the files are plain outputs of the train step.
    return Live(dir=str(directory), resume=resume, report=None, save_dvc_exp=False, dvcyaml=None)
