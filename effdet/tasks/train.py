"""`effdet train`: every training_config field, epoch checkpoints that resume, periodic eval.

A rerun of the same command continues from the newest `model.epoch-<E>.tlt` in the model
directory: weights, optimizer and EMA state and the step come from the checkpoint, and the
input stream is a pure function of (seed, image index), so it restarts at the same image.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
# The public API can switch op determinism on but not off again (needed around XLA runs).
from tensorflow.python.framework import config as tf_framework_config

from effdet.anchors import anchors_for
from effdet.data.pipeline import data_errors, train_dataset
from effdet.detector import DetectFunction
from effdet.errors import EffdetError
from effdet.coco_metrics import json_ready
from effdet.formats.atomic import atomic_write_bytes, remove_stale_temps
from effdet.formats.tlt import read_tlt
from effdet.log import PROGRESS, redact
from effdet.losses import detection_loss
from effdet.model.saving import (
    EMA, OPTIMIZER, WEIGHTS, Architecture, arrays_to_members, assign_arrays, members_to_arrays,
    save_model,
)
from effdet.model.pretrained import load_pretrained
from effdet.model.variants import Variant, get_variant
from effdet.progress import Pace, duration
from effdet.spec import ExperimentConfig, load_spec
from effdet.training.checkpoints import FINAL, checkpoint_path, checkpoints, rotate
from effdet.training.ema import WeightAverage
from effdet.training.regularization import decayed_kernels, weight_decay
from effdet.training.lock import model_dir_lock
from effdet.training.reporting import TrainingLog
from effdet.training.schedule import WarmupCosine
from effdet.training.reproducible import fixed_graph_rewrites, use_one_executor_thread
from effdet.training.strategy import (
    SummedGradientSGD, average_across_replicas, batch_norm_statistics, is_chief, make_strategy,
    sum_across_replicas,
)

log = logging.getLogger("effdet")

# Fields a resumed run may change: they steer when the run stops or what it reports, not
# the weights it computes.
# Data locations may move between runs, and the initial weights only matter at step 0.
RUN_CONTROL_FIELDS = frozenset(
    [f"training_config.{name}" for name in (
        "stop_at_epoch", "resume", "checkpoint_period", "keep_checkpoint_max",
        "logging_frequency", "disable_logging", "profile_skip_steps", "iterations_per_loop",
        "checkpoint", "pruned_model_path")]
    + [f"dataset_config.{name}" for name in (
        "training_file_pattern", "validation_file_pattern", "validation_json_file",
        "testdev_dir")])
RANDOM = "random"


@dataclass(frozen=True)
class Steps:
    """The step arithmetic that epochs, warm-up, checkpoints and stopping share."""

    per_epoch: int
    total: int  # the LR schedule ends here (num_epochs)
    stop: int  # training stops here (stop_at_epoch, when set)
    warmup: int

    @classmethod
    def of(cls, config: ExperimentConfig) -> Steps:
        """TAO's counts: an epoch is num_examples_per_epoch / train_batch_size steps of every
        replica (the per-GPU batch, so N GPUs see N times the examples), and the warm-up and
        schedule lengths are truncated from the unrounded epoch (models/det_model_fn.py:52-56,
        executer/distributed_executer.py:362-363)."""
        training = config.training_config
        batch = training.train_batch_size
        per_epoch = max(1, training.num_examples_per_epoch // batch)
        exact_epoch = training.num_examples_per_epoch / batch
        stop_epoch = training.stop_at_epoch or training.num_epochs
        return cls(per_epoch, max(per_epoch * training.num_epochs,
                                  int(training.num_epochs * exact_epoch)),
                   per_epoch * min(stop_epoch, training.num_epochs),
                   int(training.lr_warmup_epoch * exact_epoch))


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    step: int
    epoch: int
    resumed_from: Path | None
    last_losses: dict[str, float]


def train(experiment_spec: Path, model_dir: Path, key: str, *, gpus: int = 1,
          gpu_index: int | Sequence[int] | None = None, variant: Variant | None = None,
          use_amp: bool = False, sync_bn: bool = False) -> TrainResult:
    """Train (or continue training) the experiment in `experiment_spec` into `model_dir`.

    `variant` overrides the architecture table entry (tests use tiny networks); `use_amp`
    (TAO's --use_amp) turns training_config.amp on; `sync_bn` normalises with the global
    batch's statistics when there are several replicas.
    """
    config = load_spec(experiment_spec)
    if use_amp:
        config = dataclasses.replace(config, training_config=dataclasses.replace(
            config.training_config, amp=True))
    return Trainer(config, Path(model_dir), key, gpus=gpus, gpu_index=gpu_index,
                   variant=variant, sync_bn=sync_bn).run()


class Trainer:
    def __init__(self, config: ExperimentConfig, model_dir: Path, key: str, *, gpus: int,
                 gpu_index: int | Sequence[int] | None, variant: Variant | None,
                 sync_bn: bool = False):
        self.config = config
        self.sync_bn = sync_bn
        self.training = config.training_config
        self.model_dir = model_dir
        self.key = key
        use_one_executor_thread()  # before the strategy initialises TensorFlow
        self.strategy = make_strategy(gpus, gpu_index)
        self.chief = is_chief(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = self.training.train_batch_size * self.replicas
        self.steps = Steps.of(config)
        self.variant = variant or get_variant(config.model_config.model_name)
        self.eval_skip_reported = False
        self.detect: DetectFunction | None = None  # built at the first evaluation, then reused
        self.reports: TrainingLog | None = None

    # --- set-up -----------------------------------------------------------------------------

    def architecture(self) -> Architecture:
        widths = None
        if self.training.pruned_model_path:
            manifest = read_tlt(self.training.pruned_model_path, self.key).manifest
            if "architecture" not in manifest:
                raise EffdetError(f"{self.training.pruned_model_path}: not an effdet model")
            pruned = Architecture.from_manifest(manifest["architecture"])
            widths = pruned.widths
            self.variant = pruned.variant
        return Architecture.from_config(self.config, self.variant, widths)

    def build(self, architecture: Architecture) -> None:
        seed = self.training.tf_random_seed
        keras.utils.set_random_seed(seed)
        if self.training.use_xla:
            # XLA has no deterministic MaxPool gradient; such runs are not bit-reproducible.
            log.warning("use_xla: training is not bit-for-bit reproducible under XLA")
            tf_framework_config.disable_op_determinism()
        else:
            tf.config.experimental.enable_op_determinism()
        if self.training.amp:
            gpu = bool(tf.config.list_logical_devices("GPU"))
            keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
        with self.strategy.scope():
            self.model = architecture.build(sync_bn=self.sync_bn)
            schedule = WarmupCosine(self.training.learning_rate, self.training.lr_warmup_init,
                                    self.steps.warmup, self.steps.total)
            optimizer = SummedGradientSGD(
                learning_rate=schedule, momentum=self.training.momentum,
                global_clipnorm=self.training.clip_gradients_norm or None)
            if keras.mixed_precision.global_policy().name == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            decay = self.training.moving_average_decay
            self.ema = WeightAverage(self.model.weights, decay) if decay > 0 else None
        self.schedule = schedule
        self.kernels = decayed_kernels(self.model.trainable_variables)

    def restore(self) -> tuple[Path | None, int]:
        """Resume from the newest checkpoint, else start from `checkpoint` (transfer)."""
        found = checkpoints(self.model_dir)
        if found:
            epoch, path = found[-1]
            contents = read_tlt(path, self.key)
            self._check_same_experiment(contents.manifest.get("config", {}), path)
            assign_arrays(self.model.weights, members_to_arrays(WEIGHTS, contents.members), str(path))
            if self.ema is not None and any(m.startswith(f"{EMA}/") for m in contents.members):
                self.ema.load(members_to_arrays(EMA, contents.members))
            self._load_state(self.optimizer.variables,
                             members_to_arrays(OPTIMIZER, contents.members), path, "optimizer")
            self._load_state(self.random_state(), members_to_arrays(RANDOM, contents.members),
                             path, "random-generator")
            step = int(contents.manifest["step"])
            log.info("resuming from %s (epoch %d, step %d)", path, epoch, step)
            return path, step
        # TAO's retrain sets both; with only pruned_model_path its weights are the start.
        initial = self.training.checkpoint or self.training.pruned_model_path
        if initial:
            self._transfer(Path(initial))
        return None, 0

    def _check_same_experiment(self, saved: dict[str, Any], source: Path) -> None:
        """Refuse to continue a run whose spec changed in a way that changes the result."""
        current = self.config.to_dict()
        changed = [
            f"{section}.{name}"
            for section, values in current.items() if section != "eval_config"
            for name, value in values.items()
            if f"{section}.{name}" not in RUN_CONTROL_FIELDS
            and saved.get(section, {}).get(name) != value
        ]
        if changed:
            raise EffdetError(
                f"{source}: the checkpoints in {self.model_dir} come from a different spec "
                f"({', '.join(changed[:3])}{' …' if len(changed) > 3 else ''} changed); "
                "train into a new model_dir or delete them")

    @staticmethod
    def _load_state(variables: list[Any], arrays: dict[str, np.ndarray], source: Path,
                    what: str) -> None:
        if len(arrays) != len(variables):
            raise EffdetError(f"{source}: {what} state has {len(arrays)} variables, "
                              f"expected {len(variables)} (was the spec changed?)")
        for index, variable in enumerate(variables):
            variable.assign(arrays[f"{index:05d}"])

    def _transfer(self, path: Path) -> None:
        pattern = self.training.skip_checkpoint_variables
        kind, report = load_pretrained(path, self.model, self.config.model_config, self.variant,
                                       self.key, re.compile(pattern) if pattern else None)
        if self.ema is not None:
            self.ema.load({v.path: v.numpy() for v in self.model.weights})
        log.info("initialised from %s (%s): %s%s", path, kind, report.summary(),
                 f" (skipping /{pattern}/)" if pattern else "")
        if report.unused:
            log.info("not used from %s: %s%s", path, ", ".join(report.unused[:5]),
                     " …" if len(report.unused) > 5 else "")

    # --- the loop ---------------------------------------------------------------------------

    def make_step_fn(self):
        levels = list(range(self.config.model_config.min_level,
                            self.config.model_config.max_level + 1))
        head_classes = self.config.dataset_config.num_classes - 1
        l2, l1 = self.training.l2_weight_decay, self.training.l1_weight_decay
        scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

        def step_fn(images, labels):
            """One replica's step on its share of the global batch. Its losses are its shares
            of the global batch's (normalised by the global positives, 1/replicas of the
            weight decay), so they and their gradients sum over replicas to the global
            batch's; the optimizer clips that sum."""
            positives, = sum_across_replicas(
                [tf.reduce_sum(tf.cast(labels["num_positives"], tf.float32))])
            with tf.GradientTape() as tape:
                class_out, box_out = self.model(images, training=True)
                losses = detection_loss(class_out, box_out, labels, levels, head_classes,
                                        num_positives=positives)
                decay = weight_decay(self.kernels, l2, l1) if (l2 or l1) else tf.constant(0.0)
                decay = decay / self.replicas
                total = losses["total_loss"] + decay
                loss = self.optimizer.scale_loss(total) if scaled else total
            variables = self.model.trainable_variables
            gradients = sum_across_replicas(tape.gradient(loss, variables))
            self.optimizer.apply(gradients, variables)
            average_across_replicas(batch_norm_statistics(self.model))
            if self.ema is not None:
                self.ema.update(self.optimizer.iterations)
            return {"det_loss": losses["total_loss"], "cls_loss": losses["cls_loss"],
                    "box_loss": losses["box_loss"], "reg_loss": decay, "total_loss": total}

        return step_fn

    def make_loop(self):
        step_fn = self.make_step_fn()
        if self.training.use_xla:
            # Only the step: reading the input iterator cannot be compiled by XLA.
            step_fn = tf.function(step_fn, jit_compile=True)
        names = ("det_loss", "cls_loss", "box_loss", "reg_loss", "total_loss")

        def run_steps(iterator, count):
            result = {name: tf.constant(0.0) for name in names}
            for _ in tf.range(count):
                per_replica = self.strategy.run(step_fn, args=next(iterator))
                result = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                          for k, v in per_replica.items()}
            return result

        return tf.function(run_steps, reduce_retracing=True)

    def dataset(self, start_step: int):
        anchors = anchors_for(self.config.model_config, self.config.dataset_config.image_size)

        def make(input_context: tf.distribute.InputContext):
            per_replica = input_context.get_per_replica_batch_size(self.global_batch)
            return train_dataset(self.config, anchors, batch_size=per_replica,
                                 start_step=start_step, input_context=input_context)

        return self.strategy.distribute_datasets_from_function(make)

    def run(self) -> TrainResult:
        previous_policy = keras.mixed_precision.global_policy()
        was_deterministic = tf_framework_config.is_op_determinism_enabled()
        try:
            with self.exclusive_model_dir(), fixed_graph_rewrites():
                return self._run()
        except KeyboardInterrupt:
            if self.reports is not None:
                self.reports.status("FAILURE", "Training was interrupted")
            raise
        except Exception as exc:
            if self.reports is not None:
                self.reports.status("FAILURE", redact(str(exc)) or type(exc).__name__)
            raise
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
            if was_deterministic:
                tf.config.experimental.enable_op_determinism()
            else:
                tf_framework_config.disable_op_determinism()

    @contextmanager
    def exclusive_model_dir(self) -> Iterator[None]:
        """The chief holds model_dir's lock for the whole run; what a killed run left half
        written (checkpoint and metrics temporaries) is removed once it is held."""
        if not self.chief:
            yield
            return
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with model_dir_lock(self.model_dir):
            for folder in (self.model_dir, self.model_dir / "eval"):
                for stale in remove_stale_temps(folder):
                    log.info("removed %s, left by an interrupted run", stale)
            yield

    def _run(self) -> TrainResult:
        if self.chief:
            self.model_dir.mkdir(parents=True, exist_ok=True)
        self.arch = self.architecture()
        self.build(self.arch)
        resumed_from, step = self.restore()
        if self.finished(step):
            log.info("%s: training already finished at step %d; nothing to do",
                     self.model_dir, step)
            return TrainResult(self.model_dir / FINAL, step, step // self.steps.per_epoch,
                               resumed_from, {})
        if self.chief:
            self.reports = TrainingLog(self.model_dir, self.training.num_epochs, resume_step=step)
            self.reports.status("STARTED", "Starting EfficientDet training.")
        loop = self.make_loop()
        iterator = iter(self.dataset(step))
        if step % self.steps.per_epoch == 0 and self.evaluation_due(step):
            self.evaluate(step // self.steps.per_epoch, step)  # the kill came during it
        self.epoch_started = time.perf_counter()
        log.info("training %s: %d steps/epoch, %d epochs, global batch %d on %d replica(s)",
                 self.variant.name, self.steps.per_epoch, self.training.num_epochs,
                 self.global_batch, self.replicas)
        losses: dict[str, float] = {}
        images_done, seconds = 0, 0.0  # since the last report, for a current images/s
        pace = Pace(self.steps.stop, self.global_batch)
        while step < self.steps.stop:
            to_boundary = self.steps.per_epoch - step % self.steps.per_epoch
            count = min(self.training.iterations_per_loop, to_boundary, self.steps.stop - step)
            started = time.perf_counter()
            with data_errors():
                result = loop(iterator, tf.constant(count))
            losses = {k: float(v) for k, v in result.items()}
            elapsed = time.perf_counter() - started
            previous, step = step, step + count
            if step > self.training.profile_skip_steps:  # warm-up (tracing) is not throughput
                images_done += count * self.global_batch
                seconds += elapsed
            pace.done(step, count, elapsed)
            if not np.isfinite(losses["total_loss"]):
                raise EffdetError(f"training diverged at step {step} (loss {losses['total_loss']}); "
                                  "lower learning_rate or raise lr_warmup_epoch")
            logged = (step // self.training.logging_frequency
                      > previous // self.training.logging_frequency)
            if logged:
                self.report(step, losses, images_done / seconds if seconds else 0.0)
                images_done, seconds = 0, 0.0
            epoch_end = step % self.steps.per_epoch == 0
            if self.chief and (epoch_end or logged and not self.training.disable_logging):
                self.progress(step, pace)  # before the epoch's checkpoint and evaluation
            if epoch_end:
                self.end_of_epoch(step // self.steps.per_epoch, step, losses["total_loss"])
        final = self.finish(step)
        if self.reports is not None:
            self.reports.close()
        return TrainResult(final, step, step // self.steps.per_epoch, resumed_from, losses)

    # --- outputs ----------------------------------------------------------------------------

    def report(self, step: int, losses: dict[str, float], images_per_second: float) -> None:
        if self.reports is None:
            return
        rate = float(self.schedule(step))
        epoch = step / self.steps.per_epoch
        if not self.training.disable_logging:
            log.info("step %d (epoch %.2f): loss %.4f (cls %.4f, box %.5f, reg %.4f), lr %.6f, "
                     "%.2f images/s", step, epoch, losses["total_loss"], losses["cls_loss"],
                     losses["box_loss"], losses["reg_loss"], rate, images_per_second)
        kpi = {**losses, "learning_rate": rate, "images_per_second": images_per_second}
        self.reports.scalars(step, "train", kpi)

    def progress(self, step: int, pace: Pace) -> None:
        """The console line: how far training is, its speed, the time it has left."""
        per_epoch = self.steps.per_epoch
        parts = [f"epoch {-(-step // per_epoch)}/{self.steps.stop // per_epoch}",
                 f"step {step}/{self.steps.stop}"]
        rate = pace.items_per_second()
        if rate is not None:
            parts.append(f"{rate:.1f} img/s")
        left = pace.seconds_left(step)
        if left is not None:
            parts.append(f"ETA {duration(left)}")
        log.info("train %s: %s", self.model_dir, ", ".join(parts), extra=PROGRESS)

    def manifest(self, step: int) -> dict[str, Any]:
        return {"epoch": step // self.steps.per_epoch, "step": step,
                "config": self.config.to_dict(), "classes": self.class_names()}

    def class_names(self) -> dict[str, str]:
        path = Path(self.config.dataset_config.validation_json_file)
        if not path.is_file():
            return {}
        try:
            categories = json.loads(path.read_text()).get("categories", [])
        except (OSError, ValueError):
            return {}
        return {str(c["id"]): str(c["name"]) for c in categories if "id" in c and "name" in c}

    def random_state(self) -> list[Any]:
        """Seed-generator states (stochastic depth): outside `model.weights`, but a resumed
        run must continue their sequence to end with the same weights."""
        weights = {id(v) for v in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def save(self, path: Path, step: int, with_optimizer: bool) -> None:
        optimizer_state = None
        if with_optimizer:
            optimizer_state = arrays_to_members(OPTIMIZER, {
                f"{i:05d}": v.numpy() for i, v in enumerate(self.optimizer.variables)})
            optimizer_state.update(arrays_to_members(RANDOM, {
                f"{i:05d}": v.numpy() for i, v in enumerate(self.random_state())}))
        save_model(path, self.key, self.arch, self.model,
                   manifest=self.manifest(step),
                   ema=self.ema.arrays() if self.ema is not None else None,
                   extra_members=optimizer_state)

    def end_of_epoch(self, epoch: int, step: int, loss: float) -> None:
        last = step >= self.steps.stop
        if self.reports is not None:
            now = time.perf_counter()
            self.reports.epoch_status(epoch, now - self.epoch_started, loss,
                                      float(self.schedule(step)))
            self.epoch_started = now
        if self.chief and (epoch % self.training.checkpoint_period == 0 or last):
            path = checkpoint_path(self.model_dir, epoch)
            self.save(path, step, with_optimizer=True)
            for old in rotate(self.model_dir, self.training.keep_checkpoint_max):
                log.info("removed old checkpoint %s", old.name)
            log.info("saved checkpoint %s", path)
        if self.evaluation_due(step):
            self.evaluate(epoch, step)

    def evaluation_due(self, step: int) -> bool:
        """The periodic evaluation at epoch boundary `step` has no metrics file yet: it is
        ahead, or a kill interrupted it after the epoch's checkpoint was written."""
        epoch = step // self.steps.per_epoch
        after_training = step >= self.steps.stop and self.config.eval_config.eval_after_training
        return (step > 0 and epoch % self.config.eval_config.eval_epoch_cycle == 0
                and not after_training and not self.metrics_file(epoch).exists())

    def metrics_file(self, epoch: int) -> Path:
        return self.model_dir / "eval" / f"metrics.epoch-{epoch}.json"

    def finished(self, step: int) -> bool:
        """A rerun of a completed training: the final model and its last evaluation exist."""
        if step < self.steps.stop or not (self.model_dir / FINAL).exists():
            return False
        final_eval = self.config.eval_config.eval_after_training and self.evaluation_possible()
        return not final_eval or self.metrics_file(step // self.steps.per_epoch).exists()

    def evaluation_possible(self) -> bool:
        dataset = self.config.dataset_config
        return bool(dataset.validation_file_pattern
                    and Path(dataset.validation_json_file).is_file())

    def evaluate(self, epoch: int, step: int) -> None:
        if self.reports is None:
            return
        dataset = self.config.dataset_config
        if not self.evaluation_possible():
            if not self.eval_skip_reported:
                log.warning("no evaluation: dataset_config.validation_file_pattern or "
                            "validation_json_file ('%s') is missing", dataset.validation_json_file)
                self.eval_skip_reported = True
            return
        from effdet.tasks.evaluate import evaluation_detector, evaluate_model

        if self.detect is None:
            self.detect = evaluation_detector(self.model, self.arch, self.config)
        with self.ema_weights():
            metrics = evaluate_model(self.model, self.arch, self.config, detect=self.detect)
        self.reports.evaluation(step, metrics)
        # Written last: its presence marks the evaluation as recorded (see evaluation_due).
        atomic_write_bytes(self.metrics_file(epoch), json.dumps(json_ready(metrics),
                                                                indent=2).encode())

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Evaluate with the averaged weights, then put the raw ones back."""
        saved = [v.numpy() for v in self.model.weights]
        if self.ema is not None:
            for variable, shadow in zip(self.model.weights, self.ema.shadows):
                variable.assign(shadow)
        try:
            yield
        finally:
            for variable, array in zip(self.model.weights, saved):
                variable.assign(array)

    def finish(self, step: int) -> Path:
        final = self.model_dir / FINAL
        if self.chief:
            self.save(final, step, with_optimizer=False)
            log.info("saved %s (step %d)", final, step)
        if self.config.eval_config.eval_after_training:
            self.evaluate(step // self.steps.per_epoch, step)
        if self.reports is not None:
            self.reports.status("SUCCESS", "Training finished successfully.")
        return final
