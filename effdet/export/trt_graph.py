"""The TensorRT-flavoured graph: the network plus TensorRT's EfficientNMS_TRT plugin node.

As TAO's (and TensorRT's EfficientDet sample's) graph surgeon: the raw box codes and class
logits feed one EfficientNMS_TRT node with the anchors embedded as a constant in
(y_center, x_center, height, width) (box_coding 1, which decodes automl's (ty, tx, th, tw)
codes), sigmoid applied by the plugin (score_activation), no background class (-1).
Input and outputs are named and typed as in the ONNX Runtime graph (`onnx_graph`); the
plugin returns boxes as [ymin, xmin, ymax, xmax] in network-input pixels.
"""

from __future__ import annotations

import numpy as np
import onnx

from effdet.anchors import Anchors
from effdet.errors import EffdetError
from effdet.export.onnx_graph import (
    BATCH_DIM,
    BOX_CODES,
    CLASS_LOGITS,
    OUTPUT_NAMES,
    anchors_center_size,
)

PLUGIN_OP = "EfficientNMS_TRT"
ANCHORS_NAME = "nms/anchors"


def nms_attributes(*, max_detections: int, score_threshold: float,
                   iou_threshold: float) -> dict[str, object]:
    return {
        "plugin_version": "1",
        "background_class": -1,
        "max_output_boxes": max_detections,
        "score_threshold": float(score_threshold),
        "iou_threshold": float(iou_threshold),
        "score_activation": True,
        "class_agnostic": False,
        "box_coding": 1,
    }


def add_efficient_nms(head: onnx.ModelProto, anchors: Anchors, *, max_detections: int,
                      score_threshold: float, iou_threshold: float) -> onnx.ModelProto:
    """Append EfficientNMS_TRT to the NMS-less graph from `onnx_graph.head_function`."""
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        raise EffdetError("the TensorRT graph needs onnx-graphsurgeon "
                          "(pip install onnx-graphsurgeon)") from None

    graph = gs.import_onnx(head)
    tensors = graph.tensors()
    codes, logits = tensors[BOX_CODES], tensors[CLASS_LOGITS]
    outputs = [
        gs.Variable(OUTPUT_NAMES[0], dtype=np.int32, shape=[BATCH_DIM, 1]),
        gs.Variable(OUTPUT_NAMES[1], dtype=np.float32, shape=[BATCH_DIM, max_detections, 4]),
        gs.Variable(OUTPUT_NAMES[2], dtype=np.float32, shape=[BATCH_DIM, max_detections]),
        gs.Variable(OUTPUT_NAMES[3], dtype=np.int32, shape=[BATCH_DIM, max_detections]),
    ]
    graph.layer(
        op=PLUGIN_OP, name="nms/efficient_nms",
        inputs=[codes, logits, gs.Constant(ANCHORS_NAME, anchors_center_size(anchors))],
        outputs=outputs,
        attrs=nms_attributes(max_detections=max_detections, score_threshold=score_threshold,
                             iou_threshold=iou_threshold))
    graph.outputs = outputs
    graph.cleanup().toposort()
    # The plugin op stays in the default domain, where TensorRT's parser looks it up in the
    # plugin registry; onnx.checker rejects such graphs, so TAO's graphs fail it too.
    return gs.export_onnx(graph)
