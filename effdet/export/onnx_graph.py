"""The exported detection graph: 0..255 image in, TAO's four detection outputs out.

Input `input`: float32 [batch, H, W, 3] RGB in 0..255, H x W the model's image_size, the image
already resized (aspect kept, bilinear) into the top-left corner and padded bottom/right with
MEAN_RGB (in 0..255), not 0. Normalisation runs inside the graph, as in TAO's exported models,
and turns that padding into exactly 0 - what training and evaluation see, since they pad after
normalising. `network_input` prepares images this way (runtimes and int8 calibration use it).

Outputs (ONNX Runtime graph): `num_detections` int32 [batch, 1], `detection_boxes` float32
[batch, N, 4] [ymin, xmin, ymax, xmax] in network-input pixels, `detection_scores` float32
[batch, N], `detection_classes` int32 [batch, N] category ids (head channel + 1), N =
eval_config.max_detections_per_image, zero past num_detections.

NMS is hard NMS at IoU 0.5, as in `effdet evaluate` and the Keras runtime (ONNX
NonMaxSuppression has no soft-NMS). The score floor is EXPORT_MIN_SCORE, low so the graph serves evaluation-like uses too;
runtimes apply the user's threshold (eval_config.min_score_thresh) afterwards. Pre-NMS top-k
(postprocess.PRE_NMS_TOPK class/anchor pairs) is kept, so the graph selects exactly what
`postprocess(..., nms_method="hard")` does.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any
from unittest import mock

import keras
import numpy as np
import onnx
import tensorflow as tf

from effdet.anchors import Anchors, anchors_for
from effdet.data.preprocess import MEAN_RGB, normalize_image, resize_and_pad
from effdet.model.saving import Architecture
from effdet.postprocess import (
    EMPTY_LOGIT,
    NMS_IOU_THRESHOLD,
    PRE_NMS_TOPK,
    decode_clipped,
    empty_boxes,
    flatten_outputs,
    mask_empty,
)

INPUT_NAME = "input"
OUTPUT_NAMES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
# The TensorRT-flavoured graph stops before NMS; EfficientNMS_TRT takes these.
BOX_CODES, CLASS_LOGITS = "box_codes", "class_logits"
EXPORT_MIN_SCORE = 0.001
OPSET = 17
BATCH_DIM = "batch"


def network_input(image: tf.Tensor, image_size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """RGB 0..255 [h, w, 3] -> the graph's input [H, W, 3] (mean-padded) and scale (resized/original).

    Bilinear resizing is linear, so resizing (image - mean) and adding the mean back is the
    plain resize with MEAN_RGB padding.
    """
    mean = tf.constant(MEAN_RGB)
    shifted, scale = resize_and_pad(tf.cast(image, tf.float32) - mean, image_size)
    return shifted + mean, scale


def _signature(image_size: tuple[int, int]) -> list[tf.TensorSpec]:
    return [tf.TensorSpec([None, image_size[0], image_size[1], 3], tf.float32, name=INPUT_NAME)]


def _head(model: keras.Model, architecture: Architecture,
          images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    class_outputs, box_outputs = model(normalize_image(images), training=False)
    return flatten_outputs(class_outputs, box_outputs, architecture.head_classes)


def detection_function(model: keras.Model, architecture: Architecture, *, max_detections: int,
                       min_score: float = EXPORT_MIN_SCORE,
                       iou_threshold: float = NMS_IOU_THRESHOLD) -> Callable[..., dict]:
    """The ONNX Runtime graph as a tf.function (combined NMS becomes ONNX NonMaxSuppression)."""
    anchors = anchors_for(architecture.model_config, architecture.image_size)

    @tf.function(input_signature=_signature(architecture.image_size))
    def detect(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits, codes = _head(model, architecture, images)
        all_boxes = decode_clipped(codes, anchors)
        boxes, scores = top_pairs(logits, all_boxes, PRE_NMS_TOPK)
        # Hard NMS is per class and independent across classes, so per-class NMS followed by a
        # global top-N equals postprocess's greedy class-aware loop.
        nms_boxes, nms_scores, nms_classes, valid = tf.image.combined_non_max_suppression(
            boxes[:, :, None, :], scores, max_output_size_per_class=max_detections,
            max_total_size=max_detections, iou_threshold=iou_threshold,
            score_threshold=min_score, pad_per_class=False, clip_boxes=False)
        classes = tf.where(nms_scores > 0, tf.cast(nms_classes, tf.int32) + 1, 0)
        return {"num_detections": tf.cast(valid, tf.int32)[:, None], "detection_boxes": nms_boxes,
                "detection_scores": nms_scores, "detection_classes": classes}

    return detect


def top_pairs(logits: tf.Tensor, boxes: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """postprocess's pre-NMS selection, for per-class NMS: the k best (anchor, class) logits
    [B, N, C] of anchors whose box [B, N, 4] has an area, as the boxes [B, M, 4] and sigmoid
    scores [B, M, C] of M <= k candidate anchors, 0 for the pairs not selected.

    Every such pair's anchor is among the k anchors with the highest best-class logit, so
    rank anchors first and the pairs of those only: the same selection, from k x C values
    instead of N x C. Empty anchors are masked in the ranking and in the gathered pairs, as
    postprocess masks all logits, without a pass over all of them.
    """
    num_anchors, num_classes = int(logits.shape[1]), int(logits.shape[2])
    k = min(k, num_anchors * num_classes)
    empty = empty_boxes(boxes)
    best = tf.where(empty, EMPTY_LOGIT, tf.reduce_max(logits, axis=2))
    ranked = tf.math.top_k(best, k=min(k, num_anchors))
    logits = tf.gather(logits, ranked.indices, batch_dims=1)
    dropped = tf.gather(empty, ranked.indices, batch_dims=1)[..., None]
    if k <= num_anchors:
        # Each of the k anchors has a pair at or above the k-th anchor's best logit, so the k
        # best pairs are too: the pairs below it are out, and the top-k below finds the k-th
        # among the few left (ONNX Runtime's TopK runs ~3x faster on them).
        dropped |= logits < ranked.values[:, -1:, None]
    flat = tf.reshape(tf.where(dropped, EMPTY_LOGIT, logits), [tf.shape(logits)[0], -1])
    # Only the k-th value is needed: unsorted, ONNX Runtime's TopK skips a sort.
    kth = tf.reduce_min(tf.math.top_k(flat, k=k, sorted=False).values, axis=1, keepdims=True)
    # Zeroing the pairs below the k-th (under the score floor) keeps that selection without
    # gathering per class.
    scores = tf.where(flat >= kth, tf.sigmoid(flat), 0.0)
    return (tf.gather(boxes, ranked.indices, batch_dims=1),
            tf.reshape(scores, tf.shape(logits)))


def head_function(model: keras.Model, architecture: Architecture) -> Callable[..., dict]:
    """The network without NMS: box codes [B, anchors, 4], class logits [B, anchors, classes]."""

    anchors = anchors_for(architecture.model_config, architecture.image_size)

    @tf.function(input_signature=_signature(architecture.image_size))
    def head(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits, codes = _head(model, architecture, images)
        # EfficientNMS_TRT decodes the codes itself; empty boxes are masked here, as in the
        # ONNX Runtime graph, so they never reach its top-k either.
        logits = mask_empty(logits, decode_clipped(codes, anchors))
        return {BOX_CODES: codes, CLASS_LOGITS: logits}

    return head


def to_onnx(function: Callable[..., dict], output_names: tuple[str, ...],
            opset: int = OPSET, *, onnx_runtime: bool = False) -> onnx.ModelProto:
    """Convert with tf2onnx and give the outputs our order and the batch axis a name;
    `onnx_runtime` also rewrites what ONNX Runtime's CPU kernels run slowly
    (`scales_as_depthwise_convs`, `normalize_in_rows`)."""
    import tf2onnx

    # tf2onnx numbers the nodes it makes from a process-wide counter, and its optimisers visit
    # nodes in the order of those names: a second export in one process otherwise optimises
    # the graph differently (as a fresh process would not).
    tf2onnx.utils.INTERNAL_NAME = 1
    with mock.patch.object(tf2onnx.graph.Node, "__hash__", _creation_order_hash()):
        model, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset)
    by_name = {o.name: o for o in model.graph.output}
    ordered = [by_name[name] for name in output_names]
    del model.graph.output[:]
    model.graph.output.extend(ordered)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    drop_identity_reshapes(model)
    if onnx_runtime:
        scales_as_depthwise_convs(model)
        normalize_in_rows(model)
    canonical_names(model)
    onnx.checker.check_model(model)
    return model


def _creation_order_hash() -> Callable[[Any], int]:
    """A hash for tf2onnx's graph nodes that numbers them in the order they are first hashed.

    tf2onnx keeps nodes in sets, whose order follows the hash, by default the object's memory
    address, and some of its passes act in that order: two exports of one model in two
    processes gave different graphs (e.g. a transpose kept after a Tile, or folded into a
    Reshape before it). Numbers handed out in program order are the same in every process.
    """
    numbers = itertools.count()

    def node_hash(node: Any) -> int:
        if "_effdet_hash" not in node.__dict__:
            node.__dict__["_effdet_hash"] = next(numbers)
        return node.__dict__["_effdet_hash"]

    return node_hash


def drop_identity_reshapes(model: onnx.ModelProto) -> None:
    """Bypass the Reshapes whose output has their input's shape.

    tf2onnx turns the transposes around the squeeze-excitation's [B, C, 1, 1] tensors into
    such Reshapes and removes them, or not, depending on the order in which it visits sets of
    its node objects, an order that follows their memory addresses: two exports of one model
    in two processes differed by one of them. They also cut ONNX Runtime's NCHWc layout chains
    (a reorder to NCHW and back around each).
    """
    shapes = _inferred_shapes(model)
    constants = {t.name: t for t in model.graph.initializer}
    graph_outputs = {value.name for value in model.graph.output}
    bypassed: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        target = constants.get(node.input[1]) if node.op_type == "Reshape" else None
        if (target is not None and node.output[0] not in graph_outputs
                and _is_identity_reshape(shapes.get(node.input[0]),
                                         onnx.numpy_helper.to_array(target).tolist(),
                                         _allows_zero(node))):
            bypassed[node.output[0]] = bypassed.get(node.input[0], node.input[0])
            continue
        kept.append(node)
    if not bypassed:
        return
    for node in kept:
        node.input[:] = [bypassed.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _drop_unused_initializers(model)
    stale = [value for value in model.graph.value_info if value.name in bypassed]
    for value in stale:
        model.graph.value_info.remove(value)


# Ops whose 4-D outputs are NCHW by the ONNX standard, so dimension 1 is the channels.
NCHW_PRODUCERS = frozenset({"Conv", "MaxPool", "AveragePool", "Resize"})


def scales_as_depthwise_convs(model: onnx.ModelProto) -> None:
    """Turn each product of an NCHW feature map with a scalar constant into a 1x1 depthwise Conv.

    These are the BiFPN's fusion weights (x_i * w_i, folded to constants). ONNX Runtime's NCHWc
    transformer keeps convolutions, pools, resizes and the Adds between them in its blocked
    layout but not a Mul by a scalar, so each one cost a reorder out of the layout and back
    (D0's optimised graph: 124 reorders before, 98 after). A depthwise Conv with the scalar as
    every channel's weight makes the same products, in the layout.
    """
    shapes = _inferred_shapes(model)
    constants = {t.name: t for t in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    weights = []
    for node in model.graph.node:
        scalars = [name for name in node.input
                   if name in constants and int(np.prod(constants[name].dims)) == 1]
        if node.op_type != "Mul" or len(node.input) != 2 or len(scalars) != 1:
            continue
        features = next(name for name in node.input if name != scalars[0])
        shape = shapes.get(features)
        scale = onnx.numpy_helper.to_array(constants[scalars[0]])
        if (getattr(producers.get(features), "op_type", None) not in NCHW_PRODUCERS
                or not shape or len(shape) != 4 or not shape[1] or scale.dtype != np.float32):
            continue
        weight = onnx.numpy_helper.from_array(
            np.full((shape[1], 1, 1, 1), scale.item(), np.float32), f"{node.output[0]}/weight")
        weights.append(weight)
        node.CopyFrom(onnx.helper.make_node("Conv", [features, weight.name], list(node.output),
                                            name=node.name, group=shape[1],
                                            kernel_shape=[1, 1]))
    model.graph.initializer.extend(weights)
    _drop_unused_initializers(model)


NHWC_TO_NCHW = [0, 3, 1, 2]
PER_CHANNEL_OPS = frozenset({"Sub", "Mul", "Div", "Add"})


def normalize_in_rows(model: onnx.ModelProto) -> None:
    """Run the graph input's per-channel normalisation on whole image rows.

    In NHWC the normalisation's [C] constants broadcast along the last axis, three values
    repeating, which ONNX Runtime runs element by element (D0 at 512x512: Sub and Mul 5 ms
    of 113 in its profiler). Viewed as [B, H, W*C] rows against constants tiled to W*C values,
    the same operations run on the same values, vectorised, so the outputs are bit-identical.
    Ahead of the transpose to NCHW (rather than after it) they stay so in the int8 model too,
    whose NHWC convolutions make ONNX Runtime move that transpose to the input.
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    constants = {t.name: t for t in model.graph.initializer}
    inputs = {value.name: value for value in model.graph.input}
    for transpose in model.graph.node:
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        if transpose.op_type != "Transpose" or perm != NHWC_TO_NCHW:
            continue
        chain, source = _per_channel_chain(transpose.input[0], producers, consumers, constants)
        if not chain or source not in inputs:
            continue
        dims = inputs[source].type.tensor_type.shape.dim
        width, channels = dims[2].dim_value, dims[3].dim_value
        if width and channels:
            _normalize_rows(model, chain, source, width, channels, constants)
            return


def _per_channel_chain(name: str, producers: dict, consumers: dict[str, int],
                       constants: dict) -> tuple[list[onnx.NodeProto], str]:
    """The single-use binary ops with one constant of at most one axis that lead to `name`
    (first op first), and the tensor they start from."""
    chain = []
    while (node := producers.get(name)) is not None and node.op_type in PER_CHANNEL_OPS \
            and consumers.get(name) == 1 and len(node.input) == 2:
        constant = [i for i in node.input if i in constants]
        if len(constant) != 1 or len(constants[constant[0]].dims) > 1:
            break
        chain.insert(0, node)
        name = next(i for i in node.input if i not in constants)
    return chain, name


def _normalize_rows(model: onnx.ModelProto, chain: list[onnx.NodeProto], source: str,
                    width: int, channels: int, constants: dict) -> None:
    rows, normalized = f"{source}/rows", chain[-1].output[0]
    shapes = [onnx.numpy_helper.from_array(np.array(shape, np.int64), f"{source}/{name}")
              for name, shape in (("rows_shape", [0, 0, width * channels]),
                                  ("pixels_shape", [0, 0, width, channels]))]
    for node in chain:
        for i, name in enumerate(node.input):
            if name == source:
                node.input[i] = rows
            elif name in constants and list(constants[name].dims) == [channels]:
                values = onnx.numpy_helper.to_array(constants[name])
                tiled = onnx.numpy_helper.from_array(np.tile(values, width), f"{name}/rows")
                model.graph.initializer.append(tiled)
                constants[tiled.name] = tiled
                node.input[i] = tiled.name
    chain[-1].output[0] = f"{normalized}/rows"
    for value in [v for v in model.graph.value_info
                  if v.name in {node.output[0] for node in chain} | {normalized}]:
        model.graph.value_info.remove(value)
    model.graph.initializer.extend(shapes)
    nodes = list(model.graph.node)
    first, last = nodes.index(chain[0]), nodes.index(chain[-1])
    nodes.insert(last + 1, onnx.helper.make_node(
        "Reshape", [chain[-1].output[0], shapes[1].name], [normalized],
        name=f"{normalized}/pixels"))
    nodes.insert(first, onnx.helper.make_node("Reshape", [source, shapes[0].name], [rows],
                                              name=rows))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {value.name: [d.dim_value if d.HasField("dim_value") else None
                         for d in value.type.tensor_type.shape.dim]
            for value in [*inferred.graph.value_info, *inferred.graph.input]}


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = _inputs_of_all_graphs(model.graph)
    unused = [t for t in model.graph.initializer if t.name not in used]
    for tensor in unused:
        model.graph.initializer.remove(tensor)


def _allows_zero(node: onnx.NodeProto) -> bool:
    return any(a.name == "allowzero" and a.i for a in node.attribute)


def _is_identity_reshape(shape: list[int | None] | None, target: list[int],
                         allow_zero: bool) -> bool:
    """Whether Reshape(input of `shape`, `target`) returns the input's shape: every target
    dimension equals the (static) input one or copies it (0), and at most one is -1, which
    then equals the remaining input dimension since the element count is kept."""
    if not shape or len(shape) != len(target) or target.count(-1) > 1:
        return False
    return all(t == -1 or (t == 0 and not allow_zero) or (dim is not None and t == dim)
               for dim, t in zip(shape, target))


def _inputs_of_all_graphs(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            subgraphs = ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH
                         else list(attribute.graphs))
            for subgraph in subgraphs:
                names |= _inputs_of_all_graphs(subgraph)
    return names


def canonical_names(model: onnx.ModelProto) -> None:
    """Name every node and inner tensor after its place in the graph, and order the
    initializers by first use, so that the same model always exports to the same bytes.

    tf2onnx numbers the names it makes from a process-wide counter, and when it merges equal
    constants or nodes the surviving name is whichever it met first: two exports of one model
    differed in names and initializer order, and DVC and Snakemake saw a change that was none.
    The graph's inputs and outputs keep their names (runtimes look them up).
    """
    _canonical_graph(model.graph, "", {})


def _canonical_graph(graph: onnx.GraphProto, prefix: str, outer: dict[str, str]) -> None:
    graph.doc_string = ""  # tf2onnx writes the traced function's numbered name here
    names = dict(outer)  # a subgraph sees the enclosing graph's names
    keep = prefix == ""  # the model's own inputs and outputs keep their names
    for j, value in enumerate(graph.input):
        names[value.name] = value.name if keep else f"{prefix}input_{j}"
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    order: list[str] = []
    for node in graph.node:
        for name in node.input:
            if name in initializers and name not in order:
                order.append(name)
    order += [name for name in initializers if name not in order]
    for k, name in enumerate(order):
        names[name] = f"{prefix}const_{k}"
    for i, node in enumerate(graph.node):
        node.name = f"{prefix}{node.op_type}_{i}"
        for j, name in enumerate(node.output):
            if name:
                names[name] = f"{node.name}:{j}"
    if keep:
        names.update({value.name: value.name for value in graph.output})
    for node in graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _canonical_graph(attribute.g, f"{node.name}/{attribute.name}/", names)
            for g, subgraph in enumerate(attribute.graphs):
                _canonical_graph(subgraph, f"{node.name}/{attribute.name}_{g}/", names)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = names.get(value.name, value.name)
    position = {names[name]: k for k, name in enumerate(order)}
    for tensor in graph.initializer:
        tensor.name = names[tensor.name]
    tensors = sorted(graph.initializer, key=lambda tensor: position[tensor.name])
    del graph.initializer[:]
    graph.initializer.extend(tensors)
    values = sorted(graph.value_info, key=lambda value: value.name)
    del graph.value_info[:]
    graph.value_info.extend(values)


def anchors_center_size(anchors: Anchors) -> np.ndarray:
    """Anchors as [1, N, 4] (y_center, x_center, height, width): EfficientNMS_TRT's box_coding 1."""
    ymin, xmin, ymax, xmax = np.moveaxis(anchors.boxes.astype(np.float32), -1, 0)
    return np.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin],
                    axis=-1)[None].astype(np.float32)


# Metadata stored in the ONNX model (hence also in the .etlt), so engines built later and
# runtimes know what the spec said without it.
LABELS_KEY = "effdet.labels"  # JSON list: index = category id, 0 = "background"
MIN_SCORE_KEY = "effdet.min_score_thresh"  # the spec's drawing threshold (runtimes apply it)


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    for name, value in values.items():
        model.metadata_props.add(key=name, value=value)


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}
