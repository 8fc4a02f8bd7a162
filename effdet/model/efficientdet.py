"""Assemble EfficientDet: EfficientNet backbone -> BiFPN -> shared class/box heads."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import keras

from effdet.errors import EffdetError
from effdet.model.bifpn import bifpn, extra_levels
from effdet.model.efficientnet import B0_STAGES, efficientnet_features, feature_widths
from effdet.model.heads import prediction_head
from effdet.model.layers import LayerFactory
from effdet.model.variants import Variant, get_variant
from effdet.spec.config import ModelConfig

logger = logging.getLogger("effdet")

BACKBONE_MAX_LEVEL = 5
# freeze_blocks ids as TAO numbers them (core/templates/efficientnet_tf.py:156, 186, 203):
# 0 the stem, 1..7 the MBConv stages (layer prefixes "block1".."block7"), 8 TAO's top_conv,
# which feeds none of the detector's outputs and is not built here.
TOP_BLOCK = len(B0_STAGES) + 1
NUM_FREEZABLE_BLOCKS = TOP_BLOCK + 1


def num_anchors_per_location(model_config: ModelConfig) -> int:
    return model_config.num_scales * len(model_config.aspect_ratios)


def build_efficientdet(model_config: ModelConfig, num_classes: int, image_size: tuple[int, int],
                       *, variant: Variant | None = None,
                       widths: Mapping[str, int] | None = None,
                       factory: LayerFactory | None = None,
                       sync_bn: bool = False) -> keras.Model:
    """Build the training/inference network (no pre- or post-processing).

    Input "image": float [B, H, W, 3], already normalised. Outputs `[class_outputs, box_outputs]`,
    each a list over levels min..max of float32 tensors [B, H_l, W_l, A*num_classes] and
    [B, H_l, W_l, A*4], with anchor index = scale * len(aspect_ratios) + aspect.
    `variant` overrides the table entry for `model_config.model_name` (tiny test networks);
    `widths` maps layer names to output channels (pruned models); a caller that needs to know
    which layers' widths are free passes its own `factory` (built with those widths) instead.
    `sync_bn` makes batch norm use the statistics of all replicas' images in training.
    """
    variant = variant or get_variant(model_config.model_name)
    min_level, max_level = model_config.min_level, model_config.max_level
    height, width = image_size
    if not 1 <= min_level <= BACKBONE_MAX_LEVEL or max_level < min_level:
        raise EffdetError(f"min_level must be 1..{BACKBONE_MAX_LEVEL} and <= max_level, got "
                          f"{min_level}..{max_level}")
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise EffdetError(f"image_size sides must be positive multiples of 32, got {height}x{width}")
    if num_classes < 1:
        raise EffdetError(f"num_classes must be at least 1, got {num_classes}")
    if not model_config.aspect_ratios or model_config.num_scales < 1:
        raise EffdetError("model_config needs at least one aspect ratio and one scale")
    bad_blocks = [b for b in model_config.freeze_blocks if not 0 <= b < NUM_FREEZABLE_BLOCKS]
    if bad_blocks:
        raise EffdetError(f"freeze_blocks ids must be 0..{NUM_FREEZABLE_BLOCKS - 1} "
                          f"(0 = stem, 1..7 = EfficientNet stages, 8 = top), got {bad_blocks}")

    f = factory or LayerFactory(widths, freeze_bn=model_config.freeze_bn, sync_bn=sync_bn)
    images = keras.Input(shape=(height, width, 3), name="image")
    features = efficientnet_features(images, variant.width_coefficient,
                                     variant.depth_coefficient, variant.survival_prob, f)
    features, nominal = extra_levels(features, feature_widths(variant.width_coefficient),
                                     max_level, variant.fpn_num_filters, f)
    features = bifpn(features, nominal, min_level, max_level, variant.fpn_num_filters,
                     variant.fpn_cell_repeats, variant.fpn_weight_method, f)
    anchors = num_anchors_per_location(model_config)
    class_out = prediction_head(features, "class", num_classes, anchors, variant.fpn_num_filters,
                                variant.box_class_repeats, f)
    box_out = prediction_head(features, "box", 4, anchors, variant.fpn_num_filters,
                              variant.box_class_repeats, f)
    unused = f.unused_widths()
    if unused:
        raise EffdetError(f"widths name layers this network does not have: {sorted(unused)[:5]}")

    levels = range(min_level, max_level + 1)
    model = keras.Model(images, [[class_out[lv] for lv in levels], [box_out[lv] for lv in levels]],
                        name=variant.name.replace("-", "_"))
    freeze_blocks(model, model_config.freeze_blocks)
    return model


def freeze_blocks(model: keras.Model, block_ids: tuple[int, ...]) -> None:
    """Freeze the convolution kernels of the given backbone blocks, as TAO does: their
    BatchNormalization layers keep training (TAO passes trainable=False to the convs only)."""
    prefixes = tuple("stem_" if b == 0 else f"block{b}" for b in block_ids if b != TOP_BLOCK)
    if TOP_BLOCK in block_ids:
        logger.info("freeze_blocks %d (TAO's top_conv) has no effect: the detector does not use "
                    "that layer", TOP_BLOCK)
    if not prefixes:
        return
    for layer in model.layers:
        if (layer.name.startswith(prefixes)
                and isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))):
            layer.trainable = False
    logger.info("froze the convolutions of backbone blocks %s", sorted(block_ids))
