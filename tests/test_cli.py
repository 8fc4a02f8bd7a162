"""The command line: TAO's flags for every task, one-line errors, the key never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.spec_support import complete

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Key-value"

SEED_FLAGS = {
    "dataset_convert": ["-i", "--image_dir", "-a", "--annotations_file", "-o", "--output_dir",
                        "-t", "--tag", "-s", "--num_shards", "--include_mask"],
    "train": ["-e", "--experiment_spec_file", "-d", "--model_dir", "-k", "--key", "--gpus",
              "--gpu_index", "--log_file"],
    "evaluate": ["-e", "--experiment_spec_file", "-m", "--model_path", "-k", "--key",
                 "--gpu_index", "--log_file"],
    "inference": ["-m", "--model_path", "-i", "--in_image_path", "-o", "--out_image_path",
                  "-k", "--key", "-e", "--experiment_spec_file", "-l", "--out_label_path",
                  "--label_map", "--gpu_index", "--log_file"],
    "prune": ["-m", "--model", "-o", "--output_dir", "-k", "--key", "-n", "--normalizer",
              "-eq", "--equalization_criterion", "-pg", "--pruning_granularity", "-pth",
              "-nf", "--min_num_filters", "-el", "--excluded_layers", "--gpu_index",
              "--log_file"],
    "export": ["-m", "--model_path", "-k", "--key", "-e", "--experiment_spec", "-o",
               "--output_path", "--gpu_index", "--log_file", "--verbose"],
    "gen_trt_engine": ["-m", "--model_path", "-k", "--key", "--engine_file", "--data_type",
                       "--cal_image_dir", "--cal_cache_file", "--batch_size", "--batches",
                       "--max_batch_size", "--max_workspace_size"],
    "convert_checkpoint": ["-i", "--input", "-o", "--output", "-k", "--key", "--model_name",
                           "--num_classes", "--image_size", "--log_file"],
}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("EFFDET_KEY", "EFFDET_DEBUG")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "effdet", *args], capture_output=True,
                          text=True, cwd=ROOT, env=full_env, timeout=120)


def test_top_level_help_lists_every_task():
    result = run_cli("-h")
    assert result.returncode == 0
    for task in [*SEED_FLAGS, "dataset-convert", "spec"]:
        assert task in result.stdout


@pytest.mark.parametrize("task", sorted(SEED_FLAGS))
def test_task_help_shows_seed_flags(task):
    result = run_cli(task, "-h")
    assert result.returncode == 0
    words = set(result.stdout.replace(",", " ").replace("[", " ").replace("]", " ").split())
    missing = [flag for flag in SEED_FLAGS[task] if flag not in words]
    assert not missing, f"{task} -h lacks {missing}"


def test_dataset_convert_dash_alias():
    assert run_cli("dataset-convert", "-h").returncode == 0


def test_prune_defaults_are_the_seeds():
    from effdet.cli import build_parser

    args = build_parser().parse_args(["prune", "-m", "m.tlt", "-o", "out"])
    assert (args.normalizer, args.equalization_criterion, args.pruning_granularity,
            args.pruning_threshold, args.min_num_filters, args.excluded_layers) == (
        "max", "union", 8, 0.1, 16, [])
    args = build_parser().parse_args(["prune", "-m", "m", "-o", "o", "-el", "a", "b", "-pth", "0.7"])
    assert args.excluded_layers == ["a", "b"] and args.pruning_threshold == 0.7


def test_key_from_flag_or_environment(monkeypatch):
    from effdet.errors import EffdetError
    from effdet.key import resolve_key

    monkeypatch.delenv("EFFDET_KEY", raising=False)
    with pytest.raises(EffdetError, match="no model key"):
        resolve_key(None)
    monkeypatch.setenv("EFFDET_KEY", "from-env")
    assert resolve_key(None) == "from-env"
    assert resolve_key("from-flag") == "from-flag"


def test_user_error_is_one_line_without_traceback(tmp_path):
    spec = tmp_path / "bad.txt"
    spec.write_text("training_config {\n  bogus_field: 1\n}\n")
    result = run_cli("spec", str(spec))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("effdet: error:")
    assert "Traceback" not in result.stderr
    assert ":2:" in lines[0] and "bogus_field" in lines[0]


def test_verbose_shows_traceback():
    result = run_cli("spec", "does-not-exist.txt", env={"EFFDET_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "spec file not found" in result.stderr


def test_spec_command_prints_resolved_config_and_warns_on_missing_paths():
    result = run_cli("spec", "config/specs/tao_sample.txt")
    assert result.returncode == 0
    assert "max_instances_per_image" in result.stdout and "(TAO default)" in result.stdout
    assert "matches no file" in result.stderr
    assert "training_config.checkpoint" in result.stderr


def test_spec_command_json():
    import json

    result = run_cli("spec", "--json", "config/specs/tiny.txt")
    assert result.returncode == 0
    assert json.loads(result.stdout)["dataset_config"]["image_size"] == [128, 128]


def test_log_file_receives_the_log_and_never_the_key(tmp_path):
    log_file = tmp_path / "logs" / "spec.log"
    spec = tmp_path / "spec.txt"
    spec.write_text(complete(f'training_config {{ checkpoint: "/nowhere/{SECRET}.tlt" }}\n'))
    result = run_cli("spec", str(spec), "--log_file", str(log_file), env={"EFFDET_KEY": SECRET})
    assert result.returncode == 0
    assert "does not exist" not in result.stderr
    text = log_file.read_text()
    assert "training_config.checkpoint" in text and SECRET not in text


def test_secret_filter_scrubs_registered_key(tmp_path):
    import logging

    from effdet.key import resolve_key
    from effdet.log import setup_logging

    log_file = tmp_path / "x.log"
    setup_logging(log_file)
    key = resolve_key("another-Secret-42")
    logging.getLogger("effdet").warning("opening %s with key %s", "model.tlt", key)
    try:
        raise ValueError(f"bad key {key}")
    except ValueError:
        logging.getLogger("effdet").exception("failed")
    for handler in logging.getLogger("effdet").handlers:
        handler.flush()
    text = log_file.read_text()
    assert "model.tlt" in text and "another-Secret-42" not in text and "********" in text


def test_train_without_key_or_spec_is_one_line(tmp_path):
    result = run_cli("train", "-e", "config/specs/tiny.txt", "-d", str(tmp_path))
    assert result.returncode == 1 and result.stderr.strip() == (
        "effdet: error: no model key: pass -k/--key or set EFFDET_KEY")
    result = run_cli("train", "-e", str(tmp_path / "missing.txt"), "-d", str(tmp_path), "-k", SECRET)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith("missing.txt: spec file not found")
    assert SECRET not in result.stderr


def test_usage_errors_and_unwritable_log_file_are_one_line(tmp_path):
    result = run_cli("prune", "-m", "m.tlt")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "effdet: error: effdet prune: the following arguments are required: -o/--output_dir "
        "(see effdet prune -h)"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("spec", "config/specs/tiny.txt", "--log_file", str(blocker / "x.log"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("effdet: error:") and "file" in lines[0]
