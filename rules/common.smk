# Helpers shared by the rules: which experiment is which, what `all` builds, GPU requests.
# The configuration was checked by rules/config.smk before this file is read.
import os
import socket

from effdet.key import KEY_ENV, MIN_KEY_LENGTH
from effdet.lifecycle import PARENT_ENV
from effdet.slurm_account import quiet_account_guessing

# `envvars:` only asks that the variable exists: an empty or short key would pass it and fail
# in the first job, after Snakemake has already removed that job's old outputs.
if not os.environ.get(KEY_ENV):
    config_error(KEY_ENV, "empty: set the model key in the environment (never on a command line)")
if len(os.environ[KEY_ENV]) < MIN_KEY_LENGTH:
    config_error(KEY_ENV, f"the model key needs at least {MIN_KEY_LENGTH} characters")

# Jobs end when this Snakemake process dies, even by kill -9 (effdet/lifecycle.py).
os.environ[PARENT_ENV] = f"{socket.gethostname()}:{os.getpid()}"

# profiles/slurm's `slurm-no-account`, which the Slurm plugin itself ignores.
quiet_account_guessing(workflow)

EXPERIMENTS = config["experiments"]
SPLITS = ["train", "val"]


wildcard_constraints:
    exp="|".join(EXPERIMENTS),
    split="|".join(SPLITS),


def exp_config(key):
    """A params function: the experiment's `key` section of config/config.yaml.

    A rule param named like an experiment key must hold that key's value: scripts/make_dvc_yaml.py
    turns such params into DVC params (config/config.yaml: experiments.<exp>.<key>).
    """
    return lambda wildcards: EXPERIMENTS[wildcards.exp][key]


def dataset_of(exp):
    return EXPERIMENTS[exp]["dataset"]


def spec(wildcards):
    return EXPERIMENTS[wildcards.exp]["spec"]


def pretrained(wildcards):
    """The experiment's `pretrained:` weights (the spec's checkpoint), an input of `train`."""
    weights = EXPERIMENTS[wildcards.exp].get("pretrained")
    return [weights] if weights else []


def retrain_spec(wildcards):
    return EXPERIMENTS[wildcards.exp]["retrain_spec"]


def raw_images(wildcards):
    dataset = dataset_of(wildcards.exp)
    if "coco" in dataset:
        return dataset["coco"]["image_dir"]
    return f"results/{wildcards.exp}/raw/images"


def annotations(exp, split):
    dataset = dataset_of(exp)
    if "coco" in dataset:
        return dataset["coco"][split]
    return f"results/{exp}/raw/annotations/{split}.json"


def raw_annotations(wildcards):
    return annotations(wildcards.exp, wildcards.split)


def val_annotations(wildcards):
    # The spec's validation_json_file: evaluation and export read it (class names).
    return annotations(wildcards.exp, "val")


def train_gpu(wildcards):
    """GPU count for training jobs: 1 when the experiment asks for a GPU (`gpu: true`)."""
    return 1 if EXPERIMENTS[wildcards.exp]["gpu"] else 0


def engine_gpu(wildcards):
    """Inference runs a TensorRT engine (`gpu_engine: true`) on a GPU, ONNX Runtime's on the
    CPU (gen_trt_engine always asks for a GPU)."""
    return 1 if EXPERIMENTS[wildcards.exp]["gpu_engine"] else 0


def engine_file(exp):
    kind = "engine" if EXPERIMENTS[exp]["gpu_engine"] else "onnx"
    return f"results/{exp}/engine/model.{kind}"


def final_files(exp):
    """What `all` builds for one experiment (also what the final message points at)."""
    return {
        "metrics": f"results/{exp}/eval/metrics.json",
        "retrained metrics": f"results/{exp}/retrain_eval/metrics.json",
        "prune report": f"results/{exp}/prune/prune_report.json",
        "exported model": f"results/{exp}/export/model.etlt",
        "engine": engine_file(exp),
        "annotated images": f"results/{exp}/inference/images",
        "summary": f"results/{exp}/report/summary.html",
        "training curves": f"results/{exp}/report/training_curves.svg",
    }


# --- command-line flags from the experiment's settings ---------------------------------------


def prune_flags(wildcards):
    settings = EXPERIMENTS[wildcards.exp]["prune"]
    flags = (f"-n {settings['normalizer']} -eq {settings['equalization_criterion']}"
             f" -pg {settings['granularity']} -pth {settings['threshold']}"
             f" -nf {settings['min_num_filters']}")
    if settings["excluded_layers"]:
        flags += " -el " + " ".join(settings["excluded_layers"])
    return flags


# The engines' calibration caches: TensorRT's, and ONNX Runtime's JSON ranges.
TRT_CACHE, ORT_CACHE = "calibration.bin", "calibration.json"


def engine_flags(wildcards):
    """TensorRT's precision and batch flags, and for int8 its calibration."""
    export = EXPERIMENTS[wildcards.exp]["export"]
    return (f"--data_type {export['data_type']} --max_batch_size {export['max_batch_size']}"
            + calibration_flags(wildcards, TRT_CACHE))


def ort_engine_flags(wildcards):
    """ONNX Runtime's precision: int8 calibrated as TensorRT's is (fp16 builds fp32, with a
    warning in the log)."""
    export = EXPERIMENTS[wildcards.exp]["export"]
    return f"--data_type {export['data_type']}" + calibration_flags(wildcards, ORT_CACHE)


def calibration_flags(wildcards, cache):
    if not int8_engine(wildcards):
        return ""
    export = EXPERIMENTS[wildcards.exp]["export"]
    # A fresh calibration for every new model: the cache is removed before the job.
    return (f" --cal_image_dir {raw_images(wildcards)}"
            f" --cal_cache_file results/{wildcards.exp}/engine/{cache}"
            f" --batch_size {export['cal_batch_size']} --batches {export['cal_batches']}")


def int8_engine(wildcards):
    export = EXPERIMENTS[wildcards.exp]["export"]
    return export["data_type"] == "int8"


def calibration_images(wildcards):
    return raw_images(wildcards) if int8_engine(wildcards) else []


def cache_cleanup(cache):
    """The shell prefix that removes an int8 engine's stale calibration cache."""
    def cleanup(wildcards):
        if int8_engine(wildcards):
            return f"rm -f results/{wildcards.exp}/engine/{cache} && "
        return ""

    return cleanup


def inference_flags(wildcards):
    settings = EXPERIMENTS[wildcards.exp]["inference"]
    flags = f"--batch_size {settings['batch_size']}"
    if "threshold" in settings:
        flags += f" -t {settings['threshold']}"
    return flags


def all_targets():
    targets = []
    for exp in config["run"]:
        files = final_files(exp)
        del files["prune report"]  # inside the prune folder, which is the output
        targets.extend(files.values())
    return targets


def print_final_message():
    print("\neffdet workflow finished. Results:")
    for exp in config["run"]:
        for what, path in final_files(exp).items():
            print(f"  {exp:>6} {what:<17} {path}")
    print("  report: snakemake --report results/report.html (make demo writes it)\n")
