"""The EfficientDet network (D0-D7x) in Keras 3.

The builder is imported on first use so that reading the variant table (the spec loader
does) does not pull in TensorFlow.
"""

from typing import Any

from effdet.model.variants import VARIANTS, Variant, get_variant

__all__ = ["VARIANTS", "Variant", "build_efficientdet", "get_variant", "num_anchors_per_location"]


def __getattr__(name: str) -> Any:
    if name in ("build_efficientdet", "num_anchors_per_location"):
        from effdet.model import efficientdet

        return getattr(efficientdet, name)
    raise AttributeError(f"module 'effdet.model' has no attribute {name!r}")
