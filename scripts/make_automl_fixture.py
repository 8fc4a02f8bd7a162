"""Write tests/data/automl_<model>_variables.json: google/automl's variable names and shapes.

Derived by hand from automl's source (github google/automl, folder efficientdet/, as unpacked
under /work/ref/google+automl): `backbone/efficientnet_builder.py` (_DEFAULT_BLOCKS_ARGS,
efficientnet_params), `backbone/efficientnet_model.py` (round_filters, round_repeats,
MBConvBlock._build's conv2d/tpu_batch_normalization counters, SE, Stem), `tf2/fpn_configs.py`
(bifpn_config), `tf2/efficientdet_keras.py` / `efficientdet_arch.py` (ResampleFeatureMap /
resample_feature_map, FNode, OpAfterCombine, ClassNet, BoxNet) and `hparams_config.py`
(efficientdet_model_param_dict, default_detection_configs). It deliberately shares no code with
effdet, so the test that uses it checks effdet's mapping against an independent reading.

    python scripts/make_automl_fixture.py efficientdet-d0 efficientdet-d3
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

BLOCKS = [  # efficientnet_builder._DEFAULT_BLOCKS_ARGS: repeats, kernel, stride, expand, in, out
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
]
SCALING = {"efficientnet-b0": (1.0, 1.0), "efficientnet-b1": (1.0, 1.1),
           "efficientnet-b2": (1.1, 1.2), "efficientnet-b3": (1.2, 1.4),
           "efficientnet-b4": (1.4, 1.8), "efficientnet-b5": (1.6, 2.2),
           "efficientnet-b6": (1.8, 2.6), "efficientnet-b7": (2.0, 3.1)}
DETECTORS = {  # hparams_config.efficientdet_model_param_dict
    "efficientdet-d0": ("efficientnet-b0", 64, 3, 3, 7, "fastattn"),
    "efficientdet-d1": ("efficientnet-b1", 88, 4, 3, 7, "fastattn"),
    "efficientdet-d2": ("efficientnet-b2", 112, 5, 3, 7, "fastattn"),
    "efficientdet-d3": ("efficientnet-b3", 160, 6, 4, 7, "fastattn"),
    "efficientdet-d4": ("efficientnet-b4", 224, 7, 4, 7, "fastattn"),
    "efficientdet-d5": ("efficientnet-b5", 288, 7, 4, 7, "fastattn"),
    "efficientdet-d6": ("efficientnet-b6", 384, 8, 5, 7, "sum"),
    "efficientdet-d7": ("efficientnet-b6", 384, 8, 5, 7, "sum"),
    "efficientdet-d7x": ("efficientnet-b7", 384, 8, 5, 8, "sum"),
}
NUM_CLASSES, NUM_ANCHORS, MIN_LEVEL = 90, 9, 3  # default_detection_configs
BN = ("gamma", "beta", "moving_mean", "moving_variance")


def round_filters(filters, width):
    filters *= width
    new = max(8, int(filters + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * filters else new)


def variables(model_name):
    backbone, fpn, cells, repeats, max_level, weight_method = DETECTORS[model_name]
    width, depth = SCALING[backbone]
    out = []

    def add(scope, shapes):
        out.extend([f"{scope}/{name}", list(shape)] for name, shape in shapes)

    def bn(scope, c):
        add(scope, [(n, (c,)) for n in BN])

    stem = round_filters(32, width)
    add(f"{backbone}/stem/conv2d", [("kernel", (3, 3, 3, stem))])
    bn(f"{backbone}/stem/tpu_batch_normalization", stem)
    block = itertools.count()
    channels = {}
    level = 1
    for r, k, s, e, cin, cout in BLOCKS:
        cin, cout = round_filters(cin, width), round_filters(cout, width)
        level += s == 2
        for j in range(int(math.ceil(depth * r))):
            if j:
                cin = cout
            scope = f"{backbone}/blocks_{next(block)}"
            bid, cid = itertools.count(0), itertools.count(0)
            bn_name = lambda: "tpu_batch_normalization" + ("" if not next(bid) else "_" + str(next(bid) // 2))  # noqa: E731,E501
            conv_name = lambda: "conv2d" + ("" if not next(cid) else "_" + str(next(cid) // 2))  # noqa: E731,E501
            filters = cin * e
            if e != 1:
                add(f"{scope}/{conv_name()}", [("kernel", (1, 1, cin, filters))])
                bn(f"{scope}/{bn_name()}", filters)
            add(f"{scope}/depthwise_conv2d", [("depthwise_kernel", (k, k, filters, 1))])
            bn(f"{scope}/{bn_name()}", filters)
            se = max(1, int(cin * 0.25))
            add(f"{scope}/se/conv2d", [("kernel", (1, 1, filters, se)), ("bias", (se,))])
            add(f"{scope}/se/conv2d_1", [("kernel", (1, 1, se, filters)), ("bias", (filters,))])
            add(f"{scope}/{conv_name()}", [("kernel", (1, 1, filters, cout))])
            bn(f"{scope}/{bn_name()}", cout)
        channels[level] = cout

    def resample(scope, cin):
        if cin != fpn:
            add(f"{scope}/conv2d", [("kernel", (1, 1, cin, fpn)), ("bias", (fpn,))])
            bn(f"{scope}/bn", fpn)

    feats = [channels[lv] for lv in range(MIN_LEVEL, 6)]
    for lv in range(6, max_level + 1):
        resample(f"resample_p{lv}", feats[-1])
        feats.append(fpn)
    nodes, ids = [], {lv: [i] for i, lv in enumerate(range(MIN_LEVEL, max_level + 1))}
    counter = itertools.count(max_level - MIN_LEVEL + 1)
    for lv in range(max_level - 1, MIN_LEVEL - 1, -1):
        nodes.append([ids[lv][-1], ids[lv + 1][-1]])
        ids[lv].append(next(counter))
    for lv in range(MIN_LEVEL + 1, max_level + 1):
        nodes.append(ids[lv] + [ids[lv - 1][-1]])
        ids[lv].append(next(counter))
    for c in range(cells):
        pool = list(feats)
        for n, offsets in enumerate(nodes):
            scope = f"fpn_cells/cell_{c}/fnode{n}"
            for i, offset in enumerate(offsets):
                resample(f"{scope}/resample_{i}_{offset}_{len(pool)}", pool[offset])
            if weight_method == "fastattn":
                add(scope, [("WSM" + ("" if i == 0 else f"_{i}"), ()) for i in range(len(offsets))])
            add(f"{scope}/op_after_combine{len(pool)}/conv",
                [("depthwise_kernel", (3, 3, fpn, 1)), ("pointwise_kernel", (1, 1, fpn, fpn)),
                 ("bias", (fpn,))])
            bn(f"{scope}/op_after_combine{len(pool)}/bn", fpn)
            pool.append(fpn)
        feats = [fpn] * len(feats)
    for kind, outputs in (("class", NUM_CLASSES * NUM_ANCHORS), ("box", 4 * NUM_ANCHORS)):
        for i in range(repeats):
            add(f"{kind}_net/{kind}-{i}", [("depthwise_kernel", (3, 3, fpn, 1)),
                                          ("pointwise_kernel", (1, 1, fpn, fpn)), ("bias", (fpn,))])
            for lv in range(MIN_LEVEL, max_level + 1):
                bn(f"{kind}_net/{kind}-{i}-bn-{lv}", fpn)
        add(f"{kind}_net/{kind}-predict", [("depthwise_kernel", (3, 3, fpn, 1)),
                                           ("pointwise_kernel", (1, 1, fpn, outputs)),
                                           ("bias", (outputs,))])
    return out


def main(names):
    for name in names:
        path = Path(__file__).resolve().parents[1] / "tests" / "data" / f"automl_{name}_variables.json"
        found = variables(name)
        head = json.dumps({"source": __doc__.split("\n\n")[1].replace("\n", " "),
                           "model_name": name, "num_classes": NUM_CLASSES})
        rows = ",\n".join(json.dumps(row) for row in found)  # one variable a line
        path.write_text(f'{head[:-1]},\n"variables": [\n{rows}\n]}}\n')
        print(path, len(found))


if __name__ == "__main__":
    main(sys.argv[1:])
