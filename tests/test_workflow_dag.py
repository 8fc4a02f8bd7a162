"""The Snakemake workflow end to end on a tiny demo, then what a change makes stale.

One real run (`snakemake --cores 2 all` in a tiny copy of the workflow, ~3 minutes) is shared by
the module; each staleness test copies the built tree (outputs, mtimes and Snakemake's
metadata) and reads Snakemake's dry run (`-n --quiet rules`: the job-stats table).
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.browser_support import browser, is_blank
from tests.workflow_support import KEY, copy_workflow, scheduled_jobs, snakemake, tiny_workflow

ALL_RULES = {"demo_data": 1, "dataset_convert": 2, "train": 1, "evaluate": 1, "prune": 1,
             "retrain": 1, "evaluate_retrain": 1, "export": 1, "gen_ort_engine": 1,
             "sample_images": 1, "inference": 1, "report_assets": 1, "all": 1}
AFTER_TRAIN = {"train": 1, "evaluate": 1, "prune": 1, "retrain": 1, "evaluate_retrain": 1,
               "export": 1, "gen_ort_engine": 1, "inference": 1, "report_assets": 1, "all": 1}
AFTER_PRUNE = {"prune": 1, "retrain": 1, "evaluate_retrain": 1, "export": 1,
               "gen_ort_engine": 1, "inference": 1, "report_assets": 1, "all": 1}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The tiny demo built once by Snakemake: (workflow folder, the run's stdout + stderr)."""
    root = tiny_workflow(tmp_path_factory.mktemp("workflow-built"))
    assert scheduled_jobs(root, "all") == ALL_RULES
    result = snakemake(root, "--cores", "2", "all")
    return root, result.stdout + result.stderr


@pytest.fixture
def state(built, tmp_path) -> Path:
    """A private copy of the built workflow, mtimes and .snakemake metadata included."""
    copy = tmp_path / "wf"
    shutil.copytree(built[0], copy, symlinks=True)
    return copy


def edit_config(root: Path, edit) -> None:
    config_file = root / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    edit(config["experiments"]["demo"])
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))


def test_end_to_end_run_builds_every_output_and_says_where(built):
    root, output = built
    demo = root / "results" / "demo"
    for name in ("eval", "retrain_eval"):
        metrics = json.loads((demo / name / "metrics.json").read_text())
        assert {"AP", "AP50", "AR100", "per_class_AP"} <= set(metrics)
    assert (demo / "prune" / "model.tlt").is_file()
    assert json.loads((demo / "prune" / "prune_report.json").read_text())
    assert (demo / "retrain" / "model.tlt").is_file()
    for name in ("model.etlt", "model.onnx", "model.trt.onnx", "labels.txt",
                 "nvinfer_config.txt"):
        assert (demo / "export" / name).is_file(), name
    assert (demo / "engine" / "model.onnx").is_file()
    images = sorted((demo / "inference" / "images").glob("*.jpg"))
    labels = sorted((demo / "inference" / "labels").glob("*.txt"))
    assert len(images) == len(labels) == 2
    assert (demo / "report" / "summary.html").is_file()
    # Every rule logs under logs/demo/.
    logs = {p.name for p in (root / "logs" / "demo").iterdir()}
    assert {"train.log", "prune.log", "retrain.log", "export.log", "gen_ort_engine.log",
            "inference.log"} <= logs
    # The final message says where the results are.
    assert "effdet workflow finished" in output
    for path in ("results/demo/eval/metrics.json", "results/demo/retrain_eval/metrics.json",
                 "results/demo/prune/prune_report.json", "results/demo/inference/images"):
        assert path in output


def test_the_engine_folder_has_deepstream_files_naming_exports_tensorrt_graph(built):
    demo = built[0] / "results" / "demo"
    engine = demo / "engine"
    assert {p.name for p in engine.iterdir()} == {"model.onnx", "labels.txt",
                                                  "nvinfer_config.txt"}
    assert (engine / "labels.txt").read_text() == (demo / "export" / "labels.txt").read_text()
    config = dict(line.split("=", 1) for line in
                  (engine / "nvinfer_config.txt").read_text().splitlines() if "=" in line)
    # Relative to the config's folder, where DeepStream resolves them.
    assert config["onnx-file"] == "../export/model.trt.onnx"
    assert (engine / config["onnx-file"]).is_file()
    assert (engine / config["labelfile-path"]).is_file()
    assert "model-engine-file" not in config  # DeepStream cannot load ONNX Runtime's model


def test_the_key_appears_in_no_file_and_no_command(built):
    root, output = built
    assert KEY not in output
    for path in root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_second_run_has_nothing_to_do(built):
    assert scheduled_jobs(built[0], "all") == {}


def test_prune_setting_change_reruns_prune_and_downstream_only(state):
    edit_config(state, lambda demo: demo["prune"].update(threshold=0.5))
    assert scheduled_jobs(state, "all") == AFTER_PRUNE
    # A targeted rebuild needs only the path to that file.
    assert scheduled_jobs(state, "results/demo/export/model.etlt") == {
        "prune": 1, "retrain": 1, "export": 1}


def test_export_setting_change_reruns_export_and_downstream_only(state):
    edit_config(state, lambda demo: demo["export"].update(max_batch_size=2))
    assert scheduled_jobs(state, "all") == {"export": 1, "gen_ort_engine": 1, "inference": 1,
                                            "all": 1}


def test_training_spec_edit_reruns_training_and_downstream_not_conversion(state):
    spec = state / "config" / "specs" / "demo.txt"
    # Touching alone changes nothing: Snakemake compares the checksums of small inputs.
    spec.touch()
    assert scheduled_jobs(state, "all") == {}
    spec.write_text(spec.read_text().replace("learning_rate: 0.01", "learning_rate: 0.02"))
    assert scheduled_jobs(state, "all") == AFTER_TRAIN


def test_annotation_change_reruns_everything_downstream(state):
    annotations = state / "results" / "demo" / "raw" / "annotations"
    for split in ("train", "val"):
        path = annotations / f"{split}.json"
        doc = json.loads(path.read_text())
        doc["annotations"] = doc["annotations"][:-1]
        path.write_text(json.dumps(doc))
    expected = dict(ALL_RULES)
    del expected["demo_data"]  # the annotations are its output: it is not rerun
    assert scheduled_jobs(state, "all") == expected
    # Changing how the data is generated reruns everything.
    edit_config(state, lambda demo: demo["dataset"]["synthetic"].update(seed=8))
    assert scheduled_jobs(state, "all") == ALL_RULES


def test_targeted_rebuild_builds_only_what_the_file_needs(tmp_path):
    root = tiny_workflow(tmp_path / "wf")
    assert scheduled_jobs(root, "results/demo/export/model.etlt") == {
        "demo_data": 1, "dataset_convert": 2, "train": 1, "prune": 1, "retrain": 1, "export": 1}
    assert scheduled_jobs(root, "results/demo/eval/metrics.json") == {
        "demo_data": 1, "dataset_convert": 2, "train": 1, "evaluate": 1}


def test_gpu_engine_builds_a_tensorrt_engine_with_its_deepstream_files(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    edit_config(root, lambda demo: demo.update(gpu_engine=True))
    jobs = scheduled_jobs(root, "all")
    assert jobs["gen_trt_engine"] == 1 and "gen_ort_engine" not in jobs
    plan = snakemake(root, "-n", "results/demo/engine/model.engine").stdout
    assert ("output: results/demo/engine/model.engine, results/demo/engine/labels.txt, "
            "results/demo/engine/nvinfer_config.txt") in plan


def test_int8_on_cpu_builds_a_calibrated_onnx_runtime_model(tmp_path):
    """export.data_type int8 without a GPU: ONNX Runtime's int8 model, calibrated on the raw
    images as TensorRT's engine is, its stale cache removed first."""
    root = copy_workflow(tmp_path / "wf")
    edit_config(root, lambda demo: demo["export"].update(data_type="int8", cal_batch_size=4,
                                                         cal_batches=2))
    plan = snakemake(root, "-n", "-p", "results/demo/engine/model.onnx").stdout
    command = next(line for line in plan.splitlines() if "--engine_file" in line)
    assert "rm -f results/demo/engine/calibration.json && effdet gen_trt_engine" in command
    for flag in ("--data_type int8", "--cal_image_dir results/demo/raw/images",
                 "--cal_cache_file results/demo/engine/calibration.json", "--batch_size 4",
                 "--batches 2"):
        assert flag in command, (flag, command)


def test_report_has_metrics_curves_prune_report_and_images(state):
    snakemake(state, "--report", "report.zip")
    with zipfile.ZipFile(state / "report.zip") as archive:
        names = archive.namelist()
        files = {name: archive.read(name) for name in names}
    by_name: dict[str, list[bytes]] = {}
    for name, data in files.items():
        by_name.setdefault(Path(name).name, []).append(data)
    # Both evaluations' metrics, raw and as the summary's side-by-side table.
    metrics = [json.loads(data) for data in by_name["metrics.json"]]
    assert len(metrics) == 2 and all("AP50" in m for m in metrics)
    summary = by_name["summary.html"][0].decode()
    assert "AP50" in summary and "retrained (pruned)" in summary and "Prune report" in summary
    assert re.search(r"<td>AP</td><td>\d\.\d{4}</td><td>\d\.\d{4}</td>", summary), summary
    # The training curves (DVCLive) of both trainings.
    curves = by_name["training_curves.svg"][0].decode()
    assert curves.count("<polyline") >= 2 and "total loss" in curves
    # The prune report and the annotated images.
    assert json.loads(by_name["prune_report.json"][0])
    assert len([n for n in names if n.endswith(".jpg")]) == 2
    html = by_name["report.html"][0].decode()
    assert "inference" in html and "pruning" in html


def report_results(tab, suffix: str) -> list[str]:
    return tab.evaluate(f"Object.keys(results).filter(p => p.endsWith({suffix!r})).sort()")


def show(tab, content: str, path: str) -> None:
    tab.evaluate(f"app.setView({{content: {content!r}, resultPath: {path!r},"
                 f" contentPath: results[{path!r}].data_uri}})")


def test_report_renders_in_chromium(state, tmp_path):
    """The report as a person opens it: its tables, curves and images drawn, no console error."""
    snakemake(state, "--report", "report.html")
    with browser(1400, 1000) as tab:
        tab.open((state / "report.html").as_uri())
        # The start page: the rule graph, drawn by vega.
        tab.wait_for("document.querySelectorAll('#app canvas, #app svg').length > 0", 60)
        tab.evaluate("app.showCategory('demo')")
        tab.wait_for("document.querySelector('#app').innerText.includes('summary')")
        # The summary's metrics tables: trained and retrained side by side, then pruning.
        [summary] = report_results(tab, "summary.html")
        show(tab, "html", summary)
        data_uri = tab.evaluate(f"results[{summary!r}].data_uri")
        page = tab.evaluate_in_frame(data_uri[:200], """({
            text: document.body.innerText,
            rows: [...document.querySelectorAll('table tr')]
                .map(r => [...r.children].map(c => c.innerText.trim())),
        })""")
        rows = page["rows"]
        assert rows[0] == ["metric", "trained", "retrained (pruned)"], rows
        ap = next(row for row in rows if row[:1] == ["AP"])
        assert all(re.fullmatch(r"\d\.\d{4}", value) for value in ap[1:]), rows
        assert "Prune report" in page["text"]
        tab.pump(1)
        summary_shot = tab.screenshot()
        summary_shot.save(tmp_path / "report_summary.png")
        assert not is_blank(summary_shot)
        # The training curves and the annotated inference images, decoded by the browser.
        images = report_results(tab, "training_curves.svg") + report_results(tab, ".jpg")
        assert len(images) == 3, images
        for path in images:
            show(tab, "img", path)
            size = tab.wait_for(
                f"(() => {{ const img = document.querySelector('#app img[src=\"' +"
                f" results[{path!r}].data_uri + '\"]');"
                " return img && img.complete && img.naturalWidth > 0"
                " && [img.naturalWidth, img.naturalHeight]; })()")
            assert min(size) > 16, (path, size)
            assert not is_blank(tab.screenshot()), path
        assert tab.errors == []
        assert tab.remote_requests() == []
