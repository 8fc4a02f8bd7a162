"""EfficientNet-B0..B7 feature extractor (Tan & Le, ICML 2019) without the classification top.

Layer names follow keras.applications (`stem_conv`, `block2a_expand_conv`, ...), with block
`N` = MBConv stage N (1..7) so `freeze_blocks` ids map to name prefixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

from effdet.model.layers import LayerFactory


@dataclass(frozen=True)
class StageArgs:
    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    in_filters: int
    out_filters: int
    se_ratio: float = 0.25


# The EfficientNet-B0 stages found by architecture search; larger variants scale these.
B0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    """Scale channels by the width coefficient, rounded to a multiple of `divisor`."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    return int(math.ceil(depth_coefficient * repeats))


def feature_widths(width_coefficient: float) -> dict[int, int]:
    """Unpruned channels of `efficientnet_features`' levels."""
    widths, level = {1: round_filters(STEM_FILTERS, width_coefficient)}, 1
    for args in B0_STAGES:
        level += args.strides == 2
        widths[level] = round_filters(args.out_filters, width_coefficient)
    return widths


def _mbconv(x: keras.KerasTensor, prefix: str, in_filters: int, out_filters: int,
            args: StageArgs, strides: int, drop_rate: float, f: LayerFactory) -> keras.KerasTensor:
    """Inverted residual block: expand 1x1, depthwise kxk, squeeze-excitation, project 1x1."""
    inputs = x
    if args.expand_ratio != 1:
        x = f.conv(f"{prefix}_expand_conv", in_filters * args.expand_ratio)(x)
        x = f.bn(f"{prefix}_expand_bn")(x)
        x = f.swish(f"{prefix}_expand_activation")(x)
    x = f.depthwise(f"{prefix}_dwconv", args.kernel_size, strides)(x)
    x = f.bn(f"{prefix}_bn")(x)
    x = f.swish(f"{prefix}_activation")(x)

    expanded = x.shape[-1]
    se = layers.GlobalAveragePooling2D(keepdims=True, name=f.named(f"{prefix}_se_squeeze"))(x)
    # The squeeze width is relative to the block input, not the expanded width.
    se = f.conv(f"{prefix}_se_reduce", max(1, int(in_filters * args.se_ratio)), use_bias=True)(se)
    se = f.swish(f"{prefix}_se_reduce_activation")(se)
    se = layers.Conv2D(expanded, 1, padding="same", use_bias=True,
                       name=f.named(f"{prefix}_se_expand"))(se)
    se = layers.Activation("sigmoid", name=f.named(f"{prefix}_se_sigmoid"))(se)
    x = layers.Multiply(name=f.named(f"{prefix}_se_excite"))([x, se])

    x = f.conv(f"{prefix}_project_conv", out_filters)(x)
    x = f.bn(f"{prefix}_project_bn")(x)
    if strides == 1 and in_filters == out_filters:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                               name=f.named(f"{prefix}_drop"))(x)
        x = layers.Add(name=f.named(f"{prefix}_add"))([x, inputs])
    return x


def efficientnet_features(images: keras.KerasTensor, width_coefficient: float,
                          depth_coefficient: float, survival_prob: float | None,
                          factory: LayerFactory) -> dict[int, keras.KerasTensor]:
    """Feature maps keyed by level (stride 2**level) for levels 1..5; the FPN uses 3, 4, 5."""
    f = factory
    x = f.conv("stem_conv", round_filters(STEM_FILTERS, width_coefficient), 3, strides=2)(images)
    x = f.bn("stem_bn")(x)
    x = f.swish("stem_activation")(x)

    stages = [
        (args, round_filters(args.in_filters, width_coefficient),
         round_filters(args.out_filters, width_coefficient),
         round_repeats(args.repeats, depth_coefficient))
        for args in B0_STAGES
    ]
    total_blocks = sum(repeats for *_, repeats in stages)
    drop_connect = 1.0 - survival_prob if survival_prob else 0.0

    features: dict[int, keras.KerasTensor] = {}
    level, block_index = 1, 0
    for stage, (args, in_filters, out_filters, repeats) in enumerate(stages, start=1):
        if args.strides == 2:
            level += 1
        for r in range(repeats):
            x = _mbconv(x, f"block{stage}{chr(ord('a') + r)}",
                        in_filters if r == 0 else out_filters, out_filters, args,
                        args.strides if r == 0 else 1,
                        drop_connect * block_index / total_blocks, f)
            block_index += 1
        features[level] = x  # the last stage at a stride wins
    return features
