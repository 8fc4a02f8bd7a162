"""Training's records (status.json, DVCLive, eval metrics) after a kill and a rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import effdet.tasks.train as train_module
from effdet.errors import EffdetError
from effdet.tasks.train import train
from effdet.training.reporting import TrainingLog
from tao_status import COCO_NAMES, status_lines
from test_train import KEY, TINY, data, write_spec  # noqa: F401  (data: the fixture)


class Killed(BaseException):
    """Stands for a kill -9: nothing in effdet catches it."""


def records(model_dir: Path) -> dict[str, str]:
    live = model_dir / "dvclive"
    files = [model_dir / "status.json", *sorted(live.rglob("*.tsv")),
             *sorted((model_dir / "eval").glob("*.json"))]
    return {str(p.relative_to(model_dir)): p.read_text() for p in files}


def plot_steps(model_dir: Path, group: str, name: str) -> list[int]:
    table = model_dir / "dvclive" / "plots" / "metrics" / group / f"{name}.tsv"
    return [int(row.split("\t")[0]) for row in table.read_text().splitlines()[1:]]


def test_a_kill_during_an_evaluation_redoes_it_on_resume_with_one_record(data, tmp_path,
                                                                       monkeypatch):
    spec = write_spec(tmp_path / "spec.txt", data, evaluation="eval_after_training: false",
                      training="num_epochs: 2")
    real_write = train_module.atomic_write_bytes

    def killed_at_epoch_2(path, data):
        if Path(path).name == "metrics.epoch-2.json":
            raise Killed  # after the epoch's checkpoint and DVCLive rows, before its metrics
        real_write(path, data)

    monkeypatch.setattr(train_module, "atomic_write_bytes", killed_at_epoch_2)
    with pytest.raises(Killed):
        train(spec, tmp_path / "m", KEY, variant=TINY)
    assert (tmp_path / "m" / "model.epoch-2.tlt").exists()
    monkeypatch.setattr(train_module, "atomic_write_bytes", real_write)
    train(spec, tmp_path / "m", KEY, variant=TINY)
    assert sorted(p.name for p in (tmp_path / "m" / "eval").iterdir()) == [
        "metrics.epoch-1.json", "metrics.epoch-2.json"]
    assert plot_steps(tmp_path / "m", "eval", "AP") == [2, 4]  # redone once, not twice
    assert plot_steps(tmp_path / "m", "train", "total_loss") == [1, 2, 3, 4]


def test_a_resume_drops_the_rows_logged_after_its_checkpoint(tmp_path):
    live = tmp_path / "dvclive" / "plots" / "metrics"
    for name, steps in (("train/total_loss", range(1, 7)), ("eval/AP", (2, 4, 6))):
        (live / name).parent.mkdir(parents=True, exist_ok=True)
        (live / f"{name}.tsv").write_text(
            "step\t" + name.split("/")[1] + "\n" + "".join(f"{s}\t0.5\n" for s in steps))
    TrainingLog(tmp_path, max_epoch=3, resume_step=4).close()  # resumed from step 4
    assert plot_steps(tmp_path, "train", "total_loss") == [1, 2, 3, 4]
    assert plot_steps(tmp_path, "eval", "AP") == [2, 4]


def test_status_lines_follow_taos_schema_and_a_finished_rerun_appends_nothing(data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", data, training="num_epochs: 2")
    first = train(spec, tmp_path / "m", KEY, variant=TINY)
    lines = status_lines(tmp_path / "m" / "status.json")
    assert [r["status"] for r in (lines[0], lines[-1])] == ["STARTED", "SUCCESS"]
    assert lines[0]["message"] == "Starting EfficientDet training."
    assert lines[-1]["message"] == "Training finished successfully."
    epochs = [r for r in lines if "epoch" in r]
    assert [(r["epoch"], r["max_epoch"]) for r in epochs] == [(1, 2), (2, 2)]
    evaluations = [r for r in lines if r.get("message") == "Evaluation metrics generated."]
    assert len(evaluations) == 2  # epoch 1 (eval_epoch_cycle 1) and after training
    metrics = json.loads((tmp_path / "m" / "eval" / "metrics.epoch-2.json").read_text())
    kpi = evaluations[-1]["kpi"]
    assert set(kpi) == COCO_NAMES
    assert kpi["AP50"] == round(metrics["AP50"] * 100, 4) and kpi["ARmax100"] == round(
        metrics["AR100"] * 100, 4)  # TAO's names, x100

    before = records(tmp_path / "m")
    again = train(spec, tmp_path / "m", KEY, variant=TINY)
    assert records(tmp_path / "m") == before
    assert again.step == first.step and again.model_path == first.model_path


def test_a_failed_training_ends_its_status_with_failure(data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", data)
    spec.write_text(spec.read_text().replace("/train/train-*", "/train/nothing-*"))
    with pytest.raises(EffdetError, match="nothing-"):
        train(spec, tmp_path / "m", KEY, variant=TINY)
    lines = status_lines(tmp_path / "m" / "status.json")
    assert [r["status"] for r in lines] == ["STARTED", "FAILURE"]
    assert "nothing-" in lines[-1]["message"]
