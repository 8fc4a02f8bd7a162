"""`effdet convert_checkpoint`: public weights -> a .tlt that every other task takes.

Sources are whatever `training_config.checkpoint` accepts (see `effdet.model.pretrained`):
automl's COCO detectors convert whole; EfficientNet backbones give a detector whose BiFPN and
heads keep their initial weights (a starting point for fine-tuning, not a model to ship).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from effdet.errors import EffdetError
from effdet.model.pretrained import TransferReport, load_pretrained
from effdet.model.pretrained.coco_classes import COCO_CLASSES
from effdet.model.saving import Architecture, save_model
from effdet.model.variants import get_variant, normalize_model_name
from effdet.spec.config import ModelConfig

log = logging.getLogger("effdet")

COCO_NUM_CLASSES = len(range(1, 91)) + 1  # automl's 90 category ids + background


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    kind: str
    report: TransferReport


def parse_image_size(text: str) -> tuple[int, int]:
    """`H,W` or a single side; the CLI's --image_size."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise EffdetError(f"--image_size: expected H,W or one side in pixels, got {text!r}")
    height = int(parts[0])
    return height, int(parts[-1])


def convert_checkpoint(source: str | Path, output: str | Path, key: str, model_name: str,
                       num_classes: int, image_size: tuple[int, int] | None = None
                       ) -> ConvertResult:
    source, output = Path(source), Path(output)
    variant = get_variant(model_name)
    if num_classes < 2:
        raise EffdetError(f"--num_classes counts the background too (TAO's convention): "
                          f"at least 2, got {num_classes}")
    size = image_size or (variant.image_size, variant.image_size)
    model_config = ModelConfig(model_name=normalize_model_name(model_name),
                               anchor_scale=variant.anchor_scale, max_level=variant.max_level)
    architecture = Architecture(model_config, num_classes, size, variant)
    model = architecture.build()
    kind, report = load_pretrained(source, model, model_config, variant, key)
    log.info("%s (%s): %s", source, kind, report.summary())
    if report.missing:
        log.warning("%d variables are not in %s and keep their initial values (e.g. %s): "
                    "fine-tune the model before using it", len(report.missing), source,
                    ", ".join(report.missing[:3]))
    classes = ({str(i): name for i, name in COCO_CLASSES.items()}
               if num_classes == COCO_NUM_CLASSES else {})
    manifest = {"epoch": 0, "step": 0, "classes": classes,
                "converted": {"from": source.name, "kind": kind, "loaded": len(report.loaded),
                              "missing": len(report.missing), "unused": len(report.unused)}}
    save_model(output, key, architecture, model, manifest=manifest)
    log.info("wrote %s", output)
    return ConvertResult(output, kind, report)
