"""BiFPN feature network: extra levels from P5, then repeated top-down + bottom-up cells."""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from effdet.errors import EffdetError
from effdet.model.layers import FastNormalizedFusion, LayerFactory, NearestResize


@dataclass(frozen=True)
class FusionNode:
    level: int
    inputs: tuple[int, ...]  # indices into [input levels..., earlier nodes...]


def bifpn_nodes(min_level: int, max_level: int) -> tuple[FusionNode, ...]:
    """Top-down nodes for levels max-1..min, then bottom-up nodes for levels min+1..max."""
    ids_by_level = {level: [i] for i, level in enumerate(range(min_level, max_level + 1))}
    next_id = max_level - min_level + 1
    nodes = []
    for level in range(max_level - 1, min_level - 1, -1):
        nodes.append(FusionNode(level, (ids_by_level[level][-1], ids_by_level[level + 1][-1])))
        ids_by_level[level].append(next_id)
        next_id += 1
    for level in range(min_level + 1, max_level + 1):
        nodes.append(FusionNode(level, (*ids_by_level[level], ids_by_level[level - 1][-1])))
        ids_by_level[level].append(next_id)
        next_id += 1
    return tuple(nodes)


def _match_channels(x: keras.KerasTensor, nominal: int, target_nominal: int, channels: int,
                    prefix: str, f: LayerFactory) -> keras.KerasTensor:
    """1x1 conv (with bias) + BN to `channels`, only where the unpruned widths differ.

    Deciding by the unpruned (nominal) widths keeps a pruned network's layers the same as the
    original's whatever widths pruning chose.
    """
    if nominal == target_nominal:
        if x.shape[-1] != channels:
            raise EffdetError(f"{prefix}: {x.shape[-1]} channels meet {channels} in a fusion "
                              "(widths of a pruned model must agree within a BiFPN)")
        return x
    x = f.conv(f"{prefix}_conv", channels, use_bias=True, fixed_width=True)(x)
    return f.bn(f"{prefix}_bn")(x)


def _resample(x: keras.KerasTensor, target_hw: tuple[int, int], prefix: str,
              f: LayerFactory) -> keras.KerasTensor:
    """Nearest up-sampling or 3x3/2 max-pool down-sampling to `target_hw`."""
    height, width = x.shape[1], x.shape[2]
    if (height, width) == target_hw:
        return x
    if height > target_hw[0]:
        stride = (height - 1) // target_hw[0] + 1
        return layers.MaxPooling2D(stride + 1, stride, padding="same",
                                   name=f.named(f"{prefix}_pool"))(x)
    return NearestResize(*target_hw, name=f.named(f"{prefix}_up"))(x)


def extra_levels(features: dict[int, keras.KerasTensor], nominal: dict[int, int],
                 max_level: int, num_filters: int,
                 f: LayerFactory) -> tuple[dict[int, keras.KerasTensor], dict[int, int]]:
    """Add P6.. by 1x1 conv + BN (if needed) and max-pooling of the previous level.

    `nominal` maps levels to their unpruned widths; returns both mappings with the new levels.
    """
    features, nominal = dict(features), dict(nominal)
    for level in range(6, max_level + 1):
        prefix = f"resample_p{level}"
        nominal[level] = num_filters
        previous = features[level - 1]
        # Without a conv (unpruned widths equal) the level keeps its input's channels.
        channels = (previous.shape[-1] if nominal[level - 1] == num_filters
                    else f.width(f"{prefix}_conv", num_filters))
        x = _match_channels(previous, nominal[level - 1], num_filters, channels, prefix, f)
        target = ((x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1)
        features[level] = _resample(x, target, prefix, f)
    return features, nominal


def bifpn(features: dict[int, keras.KerasTensor], nominal: dict[int, int], min_level: int,
          max_level: int, num_filters: int, repeats: int, weight_method: str,
          f: LayerFactory) -> dict[int, keras.KerasTensor]:
    """Run `repeats` BiFPN cells over levels min..max; returns the last output per level.

    `nominal` maps levels to the input features' unpruned widths (see `_match_channels`).
    """
    nodes = bifpn_nodes(min_level, max_level)
    feats = {level: features[level] for level in range(min_level, max_level + 1)}
    feat_nominal = {level: nominal[level] for level in feats}
    for cell in range(repeats):
        pool = [feats[level] for level in range(min_level, max_level + 1)]
        pool_nominal = [feat_nominal[level] for level in range(min_level, max_level + 1)]
        for n, node in enumerate(nodes):
            prefix = f"fpn_cell{cell}_node{n}"
            channels = f.width(f"{prefix}_conv", num_filters)
            target_hw = (pool[node.level - min_level].shape[1],
                         pool[node.level - min_level].shape[2])
            inputs = []
            for i, offset in enumerate(node.inputs):
                edge = f"{prefix}_input{i}"
                x = _match_channels(pool[offset], pool_nominal[offset], num_filters, channels,
                                    edge, f)
                inputs.append(_resample(x, target_hw, edge, f))
            if weight_method == "fastattn":
                x = FastNormalizedFusion(name=f.named(f"{prefix}_fusion"))(inputs)
            elif weight_method == "sum":
                x = layers.Add(name=f.named(f"{prefix}_fusion"))(inputs)
            else:
                raise ValueError(f"unknown fpn weight method {weight_method!r}")
            # Pre-activation order (swish, conv, BN) as in the reference BiFPN.
            x = f.swish(f"{prefix}_activation")(x)
            x = f.separable(f"{prefix}_conv", num_filters)(x)
            x = f.bn(f"{prefix}_bn")(x)
            pool.append(x)
            pool_nominal.append(num_filters)
        first_node = max_level - min_level + 1
        feats = {}
        for n in range(len(nodes) - 1, -1, -1):
            feats.setdefault(nodes[n].level, pool[first_node + n])
        feat_nominal = dict.fromkeys(feats, num_filters)
    return feats
