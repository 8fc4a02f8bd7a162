"""`effdet prune`: remove whole filters from a trained model (TAO's structured pruning).

The model's inference weights (EMA when present) are ranked per channel group
(`effdet.pruning`); the kept channels of every layer are cut out, the network is rebuilt with
the new widths and the weights are loaded into it. Writes OUT_DIR/model.tlt, whose manifest
records every width so train (pruned_model_path), evaluate and export rebuild it, and
OUT_DIR/prune_report.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effdet.errors import EffdetError
from effdet.formats.atomic import atomic_write_bytes
from effdet.formats.status import STATUS_FILE
from effdet.formats.tlt import read_tlt
from effdet.model.complexity import conv_macs, trainable_params
from effdet.model.efficientdet import build_efficientdet
from effdet.model.layers import LayerFactory
from effdet.model.saving import (EMA, WEIGHTS, Architecture, assign_arrays, members_to_arrays,
                                 save_model)
from effdet.pruning.groups import channel_graph
from effdet.pruning.surgery import PruneSettings, choose_channels, pruned_widths, slice_arrays

log = logging.getLogger("effdet")

MODEL_FILE = "model.tlt"
REPORT_FILE = "prune_report.json"


@dataclass(frozen=True)
class PruneResult:
    model_path: Path
    report_path: Path
    report: dict[str, Any]


def prune(model_path: str | Path, output_dir: str | Path, key: str,
          settings: PruneSettings = PruneSettings()) -> PruneResult:
    model_path, output_dir = Path(model_path), Path(output_dir)
    if not 0.0 <= settings.threshold <= 1.0:  # also refuses NaN
        raise EffdetError(f"-pth/--pruning_threshold must be in [0, 1] (normalised filter "
                          f"norms), got {settings.threshold:.6g}")
    # status.json is TAO's log of this very run (and of failed earlier ones), not an output.
    if output_dir.exists() and (not output_dir.is_dir()
                                or any(p.name != STATUS_FILE for p in output_dir.iterdir())):
        raise EffdetError(f"{output_dir}: output directory is not empty")
    contents = read_tlt(model_path, key)
    if "architecture" not in contents.manifest:
        raise EffdetError(f"{model_path}: not an effdet model (no architecture in its manifest)")
    architecture = Architecture.from_manifest(contents.manifest["architecture"])
    group = EMA if any(m.startswith(f"{EMA}/") for m in contents.members) else WEIGHTS
    arrays = members_to_arrays(group, contents.members)

    factory = LayerFactory(architecture.widths,
                           freeze_bn=architecture.model_config.freeze_bn)
    original = build_efficientdet(architecture.model_config, architecture.head_classes,
                                  architecture.image_size, variant=architecture.variant,
                                  factory=factory)
    assign_arrays(original.weights, arrays, str(model_path))
    graph = channel_graph(original)
    log.info("%s: %d channel groups, %d prunable", model_path, len(graph.groups),
             sum(not g.fixed for g in graph.groups.values()))
    kept = choose_channels(original, graph, arrays, factory.width_names, settings,
                           architecture.model_config.min_level, architecture.model_config.max_level)

    widths = {**(architecture.widths or {}), **pruned_widths(graph, kept, factory.width_names)}
    pruned_architecture = dataclasses.replace(architecture, widths=widths or None)
    pruned = pruned_architecture.build()
    try:
        assign_arrays(pruned.weights, slice_arrays(arrays, original, graph, kept),
                      "pruned weights")
    except EffdetError as exc:  # the surgery and the builder disagree: a bug, not bad input
        raise EffdetError(f"prune: the pruned network could not be rebuilt ({exc})") from None

    report = prune_report(original, pruned, graph, kept, settings, model_path)
    manifest = {name: value for name, value in contents.manifest.items()
                if name not in ("architecture", "step", "epoch")}
    manifest["pruned"] = {"from": model_path.name, **dataclasses.asdict(settings)}
    output_dir.mkdir(parents=True, exist_ok=True)
    out_model = output_dir / MODEL_FILE
    save_model(out_model, key, pruned_architecture, pruned, manifest=manifest)
    report_path = output_dir / REPORT_FILE
    atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
    log.info("%s", summary_table(report))
    log.info("wrote %s and %s", out_model, report_path)
    return PruneResult(out_model, report_path, report)


def prune_report(original, pruned, graph, kept, settings: PruneSettings,
                 source: Path) -> dict[str, Any]:
    before_params, after_params = trainable_params(original), trainable_params(pruned)
    before_macs, after_macs = conv_macs(original), conv_macs(pruned)
    layers = []
    for group in graph.groups.values():
        width = len(kept[group.name]) if group.name in kept else group.width
        for name in group.producers:
            layers.append({"layer": name, "group": group.name, "original": group.width,
                           "kept": width})
    return {
        "model": str(source),
        "settings": dataclasses.asdict(settings),
        "params": {"before": before_params, "after": after_params,
                   "ratio": round(after_params / before_params, 6)},
        "gmacs": {"before": round(before_macs / 1e9, 6), "after": round(after_macs / 1e9, 6),
                  "ratio": round(after_macs / before_macs, 6)},
        "groups_pruned": len(kept),
        "layers": layers,
    }


def summary_table(report: dict[str, Any]) -> str:
    pruned = [row for row in report["layers"] if row["kept"] < row["original"]]
    lines = [f"{'layer':40} {'kept':>6} / original"]
    lines += [f"{row['layer']:40} {row['kept']:>6} / {row['original']}" for row in pruned]
    params, gmacs = report["params"], report["gmacs"]
    lines.append(f"{len(pruned)} of {len(report['layers'])} layers pruned; params "
                 f"{params['before']:,} -> {params['after']:,} ({params['ratio']:.1%}); GMACs "
                 f"{gmacs['before']:.3f} -> {gmacs['after']:.3f} ({gmacs['ratio']:.1%})")
    return "\n".join(lines)
