"""Choose the channels each group keeps, and cut every weight array down to them."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from effdet.model.tao_names import resolve_layer_names
from effdet.pruning.criteria import equalize, filter_norms, kept_count, kept_indices, normalize
from effdet.pruning.groups import ChannelGraph, ChannelGroup

log = logging.getLogger("effdet")


@dataclass(frozen=True)
class PruneSettings:
    normalizer: str = "max"
    equalization_criterion: str = "union"
    granularity: int = 8
    threshold: float = 0.1
    min_filters: int = 16
    excluded_layers: tuple[str, ...] = ()


def _kernel(arrays: Mapping[str, np.ndarray], layer: str, name: str) -> np.ndarray:
    return arrays[f"{layer}/{name}"]


def group_statistic(group: ChannelGroup, graph: ChannelGraph, model: keras.Model,
                    arrays: Mapping[str, np.ndarray], settings: PruneSettings) -> np.ndarray:
    """Normalised filter norms of every layer that writes or filters the group, merged."""
    stats = []
    for name in group.producers:
        layer = model.get_layer(name)
        kernel = "pointwise_kernel" if isinstance(layer, layers.SeparableConv2D) else "kernel"
        stats.append(filter_norms(_kernel(arrays, name, kernel)))
    for name in group.followers:
        if isinstance(model.get_layer(name), layers.DepthwiseConv2D):
            stats.append(filter_norms(_kernel(arrays, name, "kernel"), depthwise=True))
    for name in readers_with_depthwise(graph, model, group.name):
        stats.append(filter_norms(_kernel(arrays, name, "depthwise_kernel"), depthwise=True))
    return equalize([normalize(s, settings.normalizer) for s in stats],
                    settings.equalization_criterion)


def readers_with_depthwise(graph: ChannelGraph, model: keras.Model, group: str) -> list[str]:
    """Separable convs whose depthwise half filters this group's channels."""
    return [name for name, read in graph.input_group.items()
            if read == group and isinstance(model.get_layer(name), layers.SeparableConv2D)]


def group_layers(graph: ChannelGraph, model: keras.Model, group: ChannelGroup) -> set[str]:
    return {*group.producers, *group.followers,
            *readers_with_depthwise(graph, model, group.name)}


def choose_channels(model: keras.Model, graph: ChannelGraph, arrays: Mapping[str, np.ndarray],
                    width_names: Collection[str], settings: PruneSettings,
                    min_level: int, max_level: int) -> dict[str, np.ndarray]:
    """Kept channel indices per prunable group (groups left whole are absent)."""
    excluded, unknown = resolve_layer_names(settings.excluded_layers, model, min_level, max_level)
    if unknown:
        # TAO ignores names that match no layer; say so instead of failing.
        log.warning("excluded layers %s are not layers of this model (ours or TAO's names); "
                    "ignored", ", ".join(repr(name) for name in unknown))
    kept = {}
    for group in graph.groups.values():
        if group.fixed or not any(name in width_names for name in group.producers):
            continue
        if excluded & group_layers(graph, model, group):
            continue
        stat = group_statistic(group, graph, model, arrays, settings)
        count = kept_count(stat, settings.threshold, settings.granularity, settings.min_filters)
        if count < group.width:
            kept[group.name] = kept_indices(stat, count)
    return kept


def slice_arrays(arrays: Mapping[str, np.ndarray], model: keras.Model, graph: ChannelGraph,
                 kept: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each variable (path "layer/name") restricted to the kept input and output channels."""

    def take(array: np.ndarray, group: str | None, axis: int) -> np.ndarray:
        return np.take(array, kept[group], axis=axis) if group in kept else array

    sliced = {}
    for path, array in arrays.items():
        name, variable = path.rsplit("/", 1)
        layer = model.get_layer(name)
        reads, writes = graph.input_group.get(name), graph.output_group.get(name)
        if isinstance(layer, layers.SeparableConv2D):
            if variable in ("depthwise_kernel", "pointwise_kernel"):
                array = take(array, reads, 2)
            if variable in ("pointwise_kernel", "bias"):
                array = take(array, writes, array.ndim - 1)
        elif isinstance(layer, layers.DepthwiseConv2D):
            array = take(array, reads, 2)
        elif isinstance(layer, layers.Conv2D):
            if variable == "kernel":
                array = take(array, reads, 2)
            array = take(array, writes, array.ndim - 1)
        elif isinstance(layer, layers.BatchNormalization):
            array = take(array, writes, 0)
        sliced[path] = array
    return sliced


def pruned_widths(graph: ChannelGraph, kept: Mapping[str, np.ndarray],
                  width_names: Collection[str]) -> dict[str, int]:
    """New widths of the layers whose width is free; the others follow them when rebuilt."""
    return {name: len(indices) for group, indices in kept.items()
            for name in graph.groups[group].producers if name in width_names}
