"""`effdet <task>`: TAO's efficientdet_tf1 command line, as a thin layer over the task functions.

Flag names and short forms are TAO's (`tao model efficientdet_tf1 <task> …`), so scripts
written for TAO keep working with the launcher prefix replaced by `effdet`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from effdet import __version__
from effdet.errors import EffdetError
from effdet.formats.status import coco_kpi, task_status
from effdet.key import KEY_ENV, resolve_key
from effdet.lifecycle import Terminated, handle_termination
from effdet.log import redact, register_secret, setup_logging
from effdet.progress import task_progress

log = logging.getLogger("effdet")
# Tasks that can run for minutes: with --log_file, a start and an end line on the console
# (effdet/progress.py); without, the whole log is on the console already.
LONG_TASKS = frozenset(["dataset_convert", "train", "evaluate", "prune", "inference", "export",
                        "gen_trt_engine"])

# --- argument groups shared by several tasks ---------------------------------------------


def _add_spec(parser: argparse.ArgumentParser, *extra_long: str) -> None:
    parser.add_argument("-e", "--experiment_spec_file", *extra_long, dest="experiment_spec",
                        required=True, metavar="SPEC", help="experiment spec file (TAO prototxt)")


def _add_key(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-k", "--key", default=None,
                        help=f"key {what} (default: the {KEY_ENV} environment variable)")


def _add_runtime(parser: argparse.ArgumentParser, multi_gpu: bool = False) -> None:
    """TAO's launcher flags, which it adds to every task (cv/common/entrypoint/entrypoint.py);
    like TAO, only train runs on several GPUs or with AMP."""
    parser.add_argument("--gpus", type=_positive_int, default=1,
                        help="number of GPUs (default 1)" if multi_gpu
                        else "number of GPUs: 1 (TAO runs only train on several)")
    parser.add_argument("--gpu_index", type=_gpu_index, nargs="+", default=None, metavar="I",
                        help="indices of the GPUs to use, one per --gpus (default: the first)")
    parser.add_argument("-np", "--num_processes", type=int, default=-1, metavar="N",
                        help="TAO's MPI process count (-1: --gpus); one effdet process drives "
                        "all --gpus, so N may be -1, 1 or --gpus")
    parser.add_argument("--use_amp", action="store_true",
                        help="automatic mixed precision (train only, as in TAO; same as "
                        "training_config.amp)")
    _add_logging(parser)


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log_file", default=None, metavar="FILE",
                        help="write the log to FILE instead of stderr")
    # SUPPRESS keeps a --verbose given before the task name from being reset here.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and tracebacks on errors (also EFFDET_DEBUG=1)")


def _add_results_dir(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-r", "--results_dir", default=None, metavar="DIR",
                        help=f"TAO's results folder: status.json{what} (default: no status.json)")


def _gpu_index(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a GPU index (0, 1, ...), got {text}")
    return value


def _check_runtime(args: argparse.Namespace, multi_gpu: bool = False) -> None:
    """TAO's launcher checks (entrypoint.py's launch_job and check_valid_gpus)."""
    task = args.task
    if args.gpus > 1 and not multi_gpu:
        raise EffdetError(f"--gpus {args.gpus}: {task} runs on one GPU (only train uses several)")
    if args.use_amp and not multi_gpu:
        raise EffdetError(f"--use_amp: AMP is supported only for train, not {task}")
    if args.gpu_index is not None and len(args.gpu_index) != args.gpus:
        raise EffdetError(f"--gpu_index {' '.join(map(str, args.gpu_index))}: give one index "
                          f"per GPU (--gpus {args.gpus})")
    if args.num_processes not in (-1, 1, args.gpus):
        raise EffdetError(f"-np {args.num_processes}: effdet runs one process for all "
                          f"--gpus {args.gpus}; use -1, 1 or {args.gpus}")


def _results_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.results_dir) if args.results_dir else None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# --- tasks -------------------------------------------------------------------------------


def _run_dataset_convert(args: argparse.Namespace) -> int:
    _check_runtime(args)
    from effdet.data.convert import dataset_convert

    with task_status(_results_dir(args), "dataset_convert"):
        dataset_convert(
            image_dir=Path(args.image_dir),
            annotations_file=Path(args.annotations_file),
            output_dir=Path(args.output_dir),
            tag=args.tag,
            num_shards=args.num_shards,
            include_mask=args.include_mask,
        )
    return 0


def _run_train(args: argparse.Namespace) -> int:
    _check_runtime(args, multi_gpu=True)
    key = resolve_key(args.key, writes=True)
    from effdet.tasks.train import train

    train(Path(args.experiment_spec), Path(args.model_dir), key, gpus=args.gpus,
          gpu_index=args.gpu_index, use_amp=args.use_amp, sync_bn=args.sync_bn)
    return 0


def _run_spec(args: argparse.Namespace) -> int:
    import json

    from effdet.spec import load_spec, path_warnings
    from effdet.spec.render import render_config

    config = load_spec(args.spec_file)
    for problem in path_warnings(config):
        log.warning("%s: %s", args.spec_file, problem)
    if args.json:
        print(json.dumps(config.to_dict(), indent=2))
    else:
        print(render_config(config))
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    _check_runtime(args)
    key = resolve_key(args.key, writes=True)
    from effdet.pruning.surgery import PruneSettings
    from effdet.tasks.prune import prune
    from effdet.training.strategy import select_gpu

    select_gpu(args.gpu_index)
    # TAO's prune writes status.json into its output folder (scripts/prune.py).
    with task_status(Path(args.output_dir), "prune") as status:
        result = prune(Path(args.model), Path(args.output_dir), key, PruneSettings(
            normalizer=args.normalizer, equalization_criterion=args.equalization_criterion,
            granularity=args.pruning_granularity, threshold=args.pruning_threshold,
            min_filters=args.min_num_filters, excluded_layers=tuple(args.excluded_layers)))
        status.kpi.update({"pruning_ratio": result.report["params"]["ratio"],
                           "param_count": result.report["params"]["after"],
                           "size": result.model_path.stat().st_size / 2**20})
    return 0


def _run_convert_checkpoint(args: argparse.Namespace) -> int:
    key = resolve_key(args.key)
    from effdet.tasks.convert_checkpoint import convert_checkpoint, parse_image_size

    convert_checkpoint(Path(args.input), Path(args.output), key, args.model_name,
                       args.num_classes, parse_image_size(args.image_size)
                       if args.image_size else None)
    return 0


def _model_key(args: argparse.Namespace) -> str | None:
    """The key, optional for plain .onnx and .engine files; a given one is still checked
    (and registered as a secret) before anything else."""
    from effdet.runtimes import KEYLESS_SUFFIXES

    keyless = Path(args.model_path).suffix.lower() in KEYLESS_SUFFIXES
    if keyless and args.key is None and not os.environ.get(KEY_ENV):
        return None
    return resolve_key(args.key)


def _run_evaluate(args: argparse.Namespace) -> int:
    _check_runtime(args)
    key = _model_key(args)
    from effdet.tasks.evaluate import evaluate
    from effdet.training.strategy import select_gpu

    select_gpu(args.gpu_index)
    output_dir = args.output_dir or args.results_dir
    with task_status(_results_dir(args), "evaluate") as status:
        metrics = evaluate(Path(args.experiment_spec), Path(args.model_path), key,
                           output_dir=Path(output_dir) if output_dir else None)
        if status is not None:  # TAO's evaluate.py: the metrics as they are, not scaled
            status.kpi.update(coco_kpi(metrics, percent=False))
    return 0


def _run_inference(args: argparse.Namespace) -> int:
    _check_runtime(args)
    results = _results_dir(args)
    if args.out_image_path is None and results is None:
        raise EffdetError("inference: give -o/--out_image_path or -r/--results_dir")
    # TAO's inference.py writes into results_dir/images_annotated and results_dir/labels.
    images = Path(args.out_image_path) if args.out_image_path else results / "images_annotated"
    labels = (Path(args.out_label_path) if args.out_label_path
              else None if args.out_image_path else results / "labels")
    key = _model_key(args)
    from effdet.tasks.inference import inference
    from effdet.training.strategy import select_gpu

    select_gpu(args.gpu_index)
    with task_status(results, "inference"):
        inference(Path(args.in_image_path), images, Path(args.experiment_spec),
                  Path(args.model_path), key, label_dir=labels,
                  label_map=Path(args.label_map) if args.label_map else None,
                  threshold=args.threshold, batch_size=args.batch_size,
                  force=args.force)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    _check_runtime(args)
    key = resolve_key(args.key, writes=True)
    from effdet.tasks.export import export

    output = Path(args.output_path) if args.output_path else None
    # TAO's export.py writes status.json beside the output file.
    where = (output or Path(args.model_path)).resolve().parent
    with task_status(where, "export"):
        export(Path(args.model_path), Path(args.experiment_spec), output, key,
               data_type=args.data_type, force=args.force, engine_file=args.engine_file,
               cal_image_dir=args.cal_image_dir, cal_cache_file=args.cal_cache_file,
               batch_size=args.batch_size, batches=args.batches,
               max_batch_size=args.max_batch_size, max_workspace_size=args.max_workspace_size)
    return 0


def _run_gen_trt_engine(args: argparse.Namespace) -> int:
    _check_runtime(args)
    # Only an .etlt needs the key; an .onnx converts without one.
    key = resolve_key(args.key) if Path(args.model_path).suffix == ".etlt" else None
    from effdet.tasks.engine import gen_trt_engine

    with task_status(_results_dir(args), "gen_trt_engine"):
        gen_trt_engine(Path(args.model_path), key, Path(args.engine_file),
                       data_type=args.data_type, cal_image_dir=args.cal_image_dir,
                       cal_cache_file=args.cal_cache_file, batch_size=args.batch_size,
                       batches=args.batches, max_batch_size=args.max_batch_size,
                       max_workspace_size=args.max_workspace_size,
                       min_batch_size=args.min_batch_size, opt_batch_size=args.opt_batch_size,
                       strict_type_constraints=args.strict_type_constraints)
    return 0


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_type", choices=["fp32", "fp16", "int8"], default="fp32",
                        help="engine precision (default fp32)")
    parser.add_argument("--cal_image_dir", default=None, help="int8 calibration images")
    parser.add_argument("--cal_cache_file", default=None,
                        help="int8 calibration cache (reused when it exists)")
    parser.add_argument("--batch_size", type=_positive_int, default=1,
                        help="calibration batch size (default 1)")
    parser.add_argument("--batches", type=_positive_int, default=10,
                        help="calibration batches (default 10)")
    parser.add_argument("--max_batch_size", type=_positive_int, default=1,
                        help="largest batch the engine accepts (default 1)")
    parser.add_argument("--max_workspace_size", type=_positive_int, default=2, metavar="GB",
                        help="TensorRT builder workspace in GB, as TAO (default 2)")


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="effdet",
        description="EfficientDet (TAO efficientdet_tf1 compatible): "
        "dataset_convert, train, evaluate, prune, inference, export, gen_trt_engine.",
    )
    parser.add_argument("--version", action="version", version=f"effdet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and tracebacks on errors (also EFFDET_DEBUG=1)")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    convert = tasks.add_parser(
        "dataset_convert", aliases=["dataset-convert"],
        help="COCO json + images → TFRecord shards",
        description="Convert a COCO-format dataset into TFRecord shards (TAO's keys).")
    convert.add_argument("-i", "--image_dir", required=True, help="directory of the raw images")
    convert.add_argument("-a", "--annotations_file", required=True, help="COCO annotation json")
    convert.add_argument("-o", "--output_dir", required=True, help="where to write the TFRecords")
    convert.add_argument("-t", "--tag", default=None,
                         help="shard name prefix (default: the annotation file's name)")
    convert.add_argument("-s", "--num_shards", type=_positive_int, default=256,
                         help="number of shards (default 256, never more than images)")
    convert.add_argument("--include_masks", "--include_mask", dest="include_mask",
                         action="store_true", help="also write the segmentation masks")
    _add_results_dir(convert, "")
    _add_runtime(convert)
    convert.set_defaults(run=_run_dataset_convert)

    train = tasks.add_parser("train", help="train a model",
                             description="Train an EfficientDet model from a spec file.")
    _add_spec(train)
    train.add_argument("-d", "--model_dir", required=True, help="folder for checkpoints and logs")
    _add_key(train, "to encrypt the checkpoints")
    train.add_argument("--sync_bn", action="store_true",
                       help="batch norm with the statistics of all replicas' images (default: "
                            "each replica its own, as TAO)")
    _add_runtime(train, multi_gpu=True)
    train.set_defaults(run=_run_train)

    evaluate = tasks.add_parser("evaluate", help="COCO metrics of a model on the validation set",
                                description="Evaluate a model with COCO metrics.")
    _add_spec(evaluate)
    evaluate.add_argument("-m", "--model_path", required=True,
                          help="the model to evaluate: .tlt, .onnx, .etlt or .engine")
    _add_key(evaluate, "to decrypt the model")
    evaluate.add_argument("-o", "--output_dir", default=None,
                          help="where to write metrics.json (default: -r, else the model's "
                          "directory)")
    _add_results_dir(evaluate, " (and metrics.json without -o)")
    _add_runtime(evaluate)
    evaluate.set_defaults(run=_run_evaluate)

    prune = tasks.add_parser("prune", help="remove filters from a trained model",
                             description="Structured pruning of a trained model.")
    prune.add_argument("-m", "--model", required=True, help="the .tlt model to prune")
    prune.add_argument("-o", "--output_dir", required=True, help="where to write the pruned model")
    _add_key(prune, "to decrypt and encrypt the model")
    prune.add_argument("-n", "--normalizer", choices=["max", "L2"], default="max",
                       help="normalise each layer's filter norms by its max or L2 (default max)")
    prune.add_argument("-eq", "--equalization_criterion", default="union",
                       choices=["union", "intersection", "arithmetic_mean", "geometric_mean"],
                       help="how coupled layers share statistics (default union)")
    prune.add_argument("-pg", "--pruning_granularity", type=_positive_int, default=8,
                       help="filters removed at a time (default 8)")
    prune.add_argument("-pth", "--pruning_threshold", type=float, default=0.1,
                       help="threshold on normalised norms (default 0.1)")
    prune.add_argument("-nf", "--min_num_filters", type=_positive_int, default=16,
                       help="minimum filters kept per layer (default 16)")
    prune.add_argument("-el", "--excluded_layers", nargs="*", default=[], metavar="LAYER",
                       help="layers never pruned (default none)")
    _add_runtime(prune)
    prune.set_defaults(run=_run_prune)

    convert_ckpt = tasks.add_parser(
        "convert_checkpoint", aliases=["convert-checkpoint"],
        help="public weights (automl, keras.applications, TAO NGC) → .tlt",
        description="Convert a google/automl EfficientDet checkpoint, a keras.applications "
        "or TAO NGC EfficientNet backbone, or a .tlt into a .tlt for the other tasks.")
    convert_ckpt.add_argument("-i", "--input", required=True,
                              help="checkpoint prefix/folder, .h5/.hdf5/.weights.h5/.keras or .tlt")
    convert_ckpt.add_argument("-o", "--output", required=True, help="the .tlt to write")
    _add_key(convert_ckpt, "to encrypt the .tlt (and decrypt a .tlt input)")
    convert_ckpt.add_argument("--model_name", required=True, help="efficientdet-d0 … d7x")
    convert_ckpt.add_argument("--num_classes", type=_positive_int, required=True,
                              help="classes + 1 as in the spec (91 for automl's COCO)")
    convert_ckpt.add_argument("--image_size", default=None,
                              help="H,W (default: the variant's, e.g. 512,512 for d0)")
    _add_logging(convert_ckpt)
    convert_ckpt.set_defaults(run=_run_convert_checkpoint)

    inference = tasks.add_parser("inference", help="detect objects in a folder of images",
                                 description="Draw detections and write KITTI labels.")
    inference.add_argument("-m", "--model_path", required=True,
                           help="model: .tlt, .onnx, .etlt or TensorRT .engine")
    inference.add_argument("-i", "--in_image_path", "--image_dir", dest="in_image_path",
                           required=True, help="input image directory, or one image file")
    inference.add_argument("-o", "--out_image_path", default=None,
                           help="directory for the annotated images (default: "
                           "-r/images_annotated)")
    _add_spec(inference)
    _add_key(inference, "to decrypt a .tlt or .etlt (not needed for .onnx or .engine)")
    inference.add_argument("-l", "--out_label_path", default=None,
                           help="directory for KITTI label files (default: -r/labels when -o "
                           "is not given, else none)")
    inference.add_argument("--label_map", "--class_map", dest="label_map", default=None,
                           help="text file: line i names class id i+1")
    _add_results_dir(inference, ", images_annotated/ and labels/")
    inference.add_argument("-t", "--threshold", type=float, default=None,
                           help="minimum score drawn (default: eval_config.min_score_thresh)")
    inference.add_argument("--batch_size", type=_positive_int, default=1,
                           help="images per batch (default 1)")
    inference.add_argument("--force", action="store_true",
                           help="replace non-empty output directories")
    _add_runtime(inference)
    inference.set_defaults(run=_run_inference)

    export = tasks.add_parser("export", help="export a model to ONNX and .etlt",
                              description="Export a trained model for deployment.")
    export.add_argument("-m", "--model_path", required=True, help="the .tlt model to export")
    _add_key(export, "to decrypt the model and encrypt the .etlt")
    _add_spec(export, "--experiment_spec")
    export.add_argument("-o", "--output_path", default=None,
                        help="the .etlt to write; the .onnx, .trt.onnx, labels.txt and "
                        "nvinfer_config.txt go next to it (default: the model's path, .etlt)")
    export.add_argument("--engine_file", default=None,
                        help="also build an engine: ONNX Runtime's for a .onnx name, "
                        "TensorRT's otherwise")
    _add_engine_options(export)
    export.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_runtime(export)
    export.set_defaults(run=_run_export)

    engine = tasks.add_parser("gen_trt_engine", aliases=["gen-trt-engine"],
                              help="build a TensorRT engine from an exported model",
                              description="Build a TensorRT engine (GPU only).")
    engine.add_argument("-m", "--model_path", required=True, help="the .onnx or .etlt model")
    _add_key(engine, "to decrypt the .etlt")
    engine.add_argument("--engine_file", required=True,
                        help="the engine to write: TensorRT's, or ONNX Runtime's for a .onnx name")
    _add_engine_options(engine)
    # tao_deploy's gen_trt_engine has these; TAO's export does not.
    engine.add_argument("--min_batch_size", type=_positive_int, default=1,
                        help="smallest batch of the TensorRT profile (default 1)")
    engine.add_argument("--opt_batch_size", type=_positive_int, default=None,
                        help="batch TensorRT tunes for (default: --max_batch_size)")
    engine.add_argument("-s", "--strict_type_constraints", action="store_true",
                        help="TensorRT keeps the layers' precision constraints")
    _add_results_dir(engine, "")
    _add_runtime(engine)
    engine.set_defaults(run=_run_gen_trt_engine)

    spec = tasks.add_parser("spec", help="check a spec file and print the resolved configuration",
                            description="Print every resolved value (defaults marked) or the error.")
    spec.add_argument("spec_file", help="experiment spec file")
    spec.add_argument("--json", action="store_true", help="print JSON instead")
    _add_logging(spec)
    spec.set_defaults(run=_run_spec)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.verbose or os.environ.get("EFFDET_DEBUG") == "1"
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise in a task's output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if debug else "2")
    register_secret(os.environ.get(KEY_ENV, ""))
    register_secret(getattr(args, "key", None) or "")
    try:
        handle_termination()
        log_file = getattr(args, "log_file", None)
        setup_logging(log_file, verbose=debug)
        task = args.run.__name__.removeprefix("_run_")  # the canonical name, not an alias
        if task not in LONG_TASKS or not log_file:
            return args.run(args)
        with task_progress(task, log_file):
            return args.run(args)
    except EffdetError as exc:
        return _fail(str(exc), exc.exit_code, debug)
    except Terminated:
        return _fail("terminated (SIGTERM); finished outputs are kept, unfinished ones removed",
                     128 + signal.SIGTERM, debug)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, debug)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1, debug)
    except Exception as exc:  # an unexpected failure still gets one line unless debugging
        return _fail(f"{type(exc).__name__}: {exc} (run with --verbose for details)", 1, debug)


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
    else:  # TensorFlow's messages append a multi-line op trace: keep the first line
        message = message.strip().splitlines()[0] if message.strip() else message
    print(f"effdet: error: {redact(message)}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the same one-line form as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"effdet: error: {self.prog}: {message} (see {self.prog} -h)\n")


if __name__ == "__main__":
    sys.exit(main())
