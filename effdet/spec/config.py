"""The resolved experiment configuration: the one object every task reads.

The loader (`effdet.spec.loader`) fills every field from the spec file or its documented
default; nothing else reads the spec file. The defaults are TAO's effective ones (its spec
loader's fallbacks, else proto3's zero); fields TAO requires are listed in
`effdet.spec.loader.REQUIRED_FIELDS` and their defaults here only serve code that builds a
configuration directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


# Omitted fields whose default is effdet's own, not TAO's: TAO's trainer never reads
# iterations_per_loop, and its proto3 zero would mean no steps per loop here.
EFFDET_DEFAULTS = frozenset({"training_config.iterations_per_loop"})


@dataclass(frozen=True)
class DatasetConfig:
    training_file_pattern: str = ""
    validation_file_pattern: str = ""
    validation_json_file: str = ""
    testdev_dir: str = ""
    num_classes: int = 91
    image_size: tuple[int, int] = (512, 512)  # (height, width)
    use_fake_data: bool = False
    max_instances_per_image: int = 100
    skip_crowd_during_training: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    train_batch_size: int = 16
    iterations_per_loop: int = 10
    use_xla: bool = False
    disable_logging: bool = False
    checkpoint: str = ""
    stop_at_epoch: int = 0
    resume: bool = False
    checkpoint_period: int = 10
    keep_checkpoint_max: int = 0  # 0 keeps every checkpoint, as TAO does
    num_examples_per_epoch: int = 120000
    num_epochs: int = 300
    skip_checkpoint_variables: str = ""
    profile_skip_steps: int = 0
    tf_random_seed: int = 42
    moving_average_decay: float = 0.0
    lr_warmup_epoch: float = 5.0
    lr_warmup_init: float = 0.008
    learning_rate: float = 0.08
    amp: bool = False
    l2_weight_decay: float = 0.0
    l1_weight_decay: float = 0.0
    pruned_model_path: str = ""
    clip_gradients_norm: float = 5.0
    momentum: float = 0.9
    logging_frequency: int = 10


@dataclass(frozen=True)
class EvalConfig:
    min_eval_interval: int = 0
    eval_timeout: int = 0
    eval_batch_size: int = 16
    eval_epoch_cycle: int = 2
    eval_after_training: bool = False
    eval_samples: int = 5000
    min_score_thresh: float = 0.4
    max_detections_per_image: int = 100


@dataclass(frozen=True)
class AugmentationConfig:
    rand_hflip: bool = False
    random_crop_min_scale: float = 0.1
    random_crop_max_scale: float = 2.0


@dataclass(frozen=True)
class ModelConfig:
    model_name: str = "efficientdet-d0"
    freeze_bn: bool = False
    freeze_blocks: tuple[int, ...] = ()
    # TAO's convention: (width, height) pairs, relative aspect of each anchor.
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    anchor_scale: float = 4.0
    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3


@dataclass(frozen=True)
class ExperimentConfig:
    dataset_config: DatasetConfig = field(default_factory=DatasetConfig)
    training_config: TrainingConfig = field(default_factory=TrainingConfig)
    eval_config: EvalConfig = field(default_factory=EvalConfig)
    augmentation_config: AugmentationConfig = field(default_factory=AugmentationConfig)
    model_config: ModelConfig = field(default_factory=ModelConfig)
    # "section.field" names that were taken from the documented defaults, not the spec file.
    defaulted: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every resolved value (JSON-serialisable)."""
        return {
            f.name: _as_plain(getattr(self, f.name))
            for f in fields(self)
            if f.name != "defaulted"
        }


def _as_plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _as_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_as_plain(v) for v in value]
    return value
