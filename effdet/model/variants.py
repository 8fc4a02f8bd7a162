"""The EfficientDet D0-D7x compound-scaling table (Tan, Pang, Le, CVPR 2020, Table 1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from effdet.errors import EffdetError

# EfficientNet compound scaling: name -> (width coefficient, depth coefficient).
EFFICIENTNET_SCALING: dict[str, tuple[float, float]] = {
    "efficientnet-b0": (1.0, 1.0),
    "efficientnet-b1": (1.0, 1.1),
    "efficientnet-b2": (1.1, 1.2),
    "efficientnet-b3": (1.2, 1.4),
    "efficientnet-b4": (1.4, 1.8),
    "efficientnet-b5": (1.6, 2.2),
    "efficientnet-b6": (1.8, 2.6),
    "efficientnet-b7": (2.0, 3.1),
}


@dataclass(frozen=True)
class Variant:
    """Architecture of one EfficientDet variant; `replace()` it for tiny test networks."""

    name: str
    backbone: str
    image_size: int
    fpn_num_filters: int
    fpn_cell_repeats: int
    box_class_repeats: int
    width_coefficient: float
    depth_coefficient: float
    # Stochastic depth in the backbone; the reference disables it for B0 only.
    survival_prob: float | None
    fpn_weight_method: str = "fastattn"  # "fastattn" (normalised fusion) or "sum"
    anchor_scale: float = 4.0
    max_level: int = 7

    def replace(self, **changes: object) -> Variant:
        return dataclasses.replace(self, **changes)


def _variant(name: str, backbone: str, image_size: int, fpn_num_filters: int,
             fpn_cell_repeats: int, box_class_repeats: int, **extra: object) -> Variant:
    width, depth = EFFICIENTNET_SCALING[backbone]
    survival = None if backbone == "efficientnet-b0" else 0.8
    return Variant(name, backbone, image_size, fpn_num_filters, fpn_cell_repeats,
                   box_class_repeats, width, depth, survival, **extra)  # type: ignore[arg-type]


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    _variant("efficientdet-d0", "efficientnet-b0", 512, 64, 3, 3),
    _variant("efficientdet-d1", "efficientnet-b1", 640, 88, 4, 3),
    _variant("efficientdet-d2", "efficientnet-b2", 768, 112, 5, 3),
    _variant("efficientdet-d3", "efficientnet-b3", 896, 160, 6, 4),
    _variant("efficientdet-d4", "efficientnet-b4", 1024, 224, 7, 4),
    _variant("efficientdet-d5", "efficientnet-b5", 1280, 288, 7, 4),
    # D6+ use an unweighted sum in the BiFPN for training stability.
    _variant("efficientdet-d6", "efficientnet-b6", 1280, 384, 8, 5, fpn_weight_method="sum"),
    _variant("efficientdet-d7", "efficientnet-b6", 1536, 384, 8, 5, fpn_weight_method="sum",
             anchor_scale=5.0),
    _variant("efficientdet-d7x", "efficientnet-b7", 1536, 384, 8, 5, fpn_weight_method="sum",
             max_level=8),
)}


def normalize_model_name(model_name: str) -> str:
    return model_name.strip().lower().replace("_", "-")


def get_variant(model_name: str) -> Variant:
    """Look up `efficientdet-d0` ... `efficientdet-d7x` (underscores accepted)."""
    key = normalize_model_name(model_name)
    if key not in VARIANTS:
        raise EffdetError(f"unknown model_name {model_name!r}; expected one of "
                          f"{', '.join(VARIANTS)}")
    return VARIANTS[key]
