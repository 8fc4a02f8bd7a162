"""Which channels of a Keras functional network must be pruned together.

Every tensor carries a *channel space*. A convolution (or the pointwise half of a separable
one) starts a new space for its output; layers that work channel by channel (BatchNorm,
depthwise convolution, activations, pooling, resizing, dropout) keep their input's space; an
element-wise merge of several tensors (residual Add, the squeeze-excitation Multiply, BiFPN
fusion) makes their spaces one. Spaces joined that way form a `ChannelGroup`: one set of kept
channel indices must serve every layer that writes or reads it. A shared layer (the heads'
convs, run on every pyramid level) reads one space, so its inputs are joined too.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import keras
from keras import layers

from effdet.errors import EffdetError
from effdet.model.layers import FastNormalizedFusion, NearestResize

# Layers whose output channels are their input's channels, one to one.
CHANNELWISE = (layers.BatchNormalization, layers.DepthwiseConv2D, layers.Activation,
               layers.Dropout, layers.MaxPooling2D, layers.GlobalAveragePooling2D,
               NearestResize)
MERGES = (layers.Add, layers.Multiply, FastNormalizedFusion)
PRODUCERS = (layers.Conv2D, layers.SeparableConv2D)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels written by `producers` and carried through `followers` (BN, depthwise)."""

    name: str  # the first producer, in model order
    width: int
    producers: tuple[str, ...]
    followers: tuple[str, ...]
    fixed: bool  # the image's channels or a model output's: never pruned


@dataclass(frozen=True)
class ChannelGraph:
    groups: dict[str, ChannelGroup]
    input_group: dict[str, str]  # layer → group of the channels it reads
    output_group: dict[str, str]  # layer → group of the channels it writes

    def group_of(self, layer: str) -> ChannelGroup:
        return self.groups[self.output_group[layer]]


class _Spaces:
    """Union-find over channel-space keys."""

    def __init__(self) -> None:
        self._parent: dict[Hashable, Hashable] = {}

    def add(self, key: Hashable) -> Hashable:
        self._parent.setdefault(key, key)
        return key

    def find(self, key: Hashable) -> Hashable:
        root = key
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[key] != root:  # path compression
            self._parent[key], key = root, self._parent[key]
        return root

    def union(self, keys: Iterable[Hashable]) -> Hashable:
        roots = [self.find(k) for k in keys]
        for other in roots[1:]:
            self._parent[other] = roots[0]
        return roots[0]


def channel_graph(model: keras.Model) -> ChannelGraph:
    """The channel groups of `model` and which group each layer reads and writes."""
    spaces = _Spaces()
    space_of: dict[int, Hashable] = {}  # id(KerasTensor) → space key
    reads: dict[str, Hashable] = {}
    writes: dict[str, Hashable] = {}
    widths: dict[Hashable, int] = {}
    # Deepest first: every node's inputs are placed before the node.
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.operation
            inputs = [space_of[id(t)] for t in node.input_tensors]
            outputs = node.output_tensors
            if isinstance(layer, keras.layers.InputLayer):
                out = spaces.add(("input", layer.name))
            elif isinstance(layer, PRODUCERS):
                if layer.name in reads:  # a shared layer reads one space on every call
                    spaces.union([reads[layer.name], inputs[0]])
                else:
                    reads[layer.name] = inputs[0]
                out = spaces.add(("output", layer.name))
                writes[layer.name] = out
            elif isinstance(layer, CHANNELWISE):
                out = inputs[0]
                if layer.weights:
                    reads[layer.name] = writes[layer.name] = out
            elif isinstance(layer, MERGES):
                out = spaces.union(inputs)
            else:
                raise EffdetError(f"prune: layer {layer.name} ({type(layer).__name__}) is not "
                                  "supported")
            for tensor in outputs:
                space_of[id(tensor)] = out
                widths[out] = int(tensor.shape[-1])
    fixed_roots = {spaces.find(space_of[id(t)]) for t in model.outputs}
    fixed_roots |= {spaces.find(space_of[id(t)]) for t in model.inputs}

    members: dict[Hashable, tuple[list[str], list[str]]] = {}
    for layer in model.layers:  # model order, so group names and member order are stable
        if layer.name in writes:
            producers, followers = members.setdefault(spaces.find(writes[layer.name]), ([], []))
            (producers if isinstance(layer, PRODUCERS) else followers).append(layer.name)
    names = {root: producers[0] for root, (producers, _) in members.items() if producers}
    groups = {
        names[root]: ChannelGroup(names[root], widths[root], tuple(producers), tuple(followers),
                                  root in fixed_roots)
        for root, (producers, followers) in members.items() if root in names
    }

    def group_name(key: Hashable) -> str:
        root = spaces.find(key)
        if root not in names:  # the image's own channels: no layer writes them
            names[root] = f"input:{key[1]}"
            groups[names[root]] = ChannelGroup(names[root], widths[root], (), (), True)
        return names[root]

    return ChannelGraph(groups, {layer: group_name(k) for layer, k in reads.items()},
                        {layer: group_name(k) for layer, k in writes.items()})
