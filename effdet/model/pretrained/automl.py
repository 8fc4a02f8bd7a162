"""google/automl EfficientDet checkpoints: its variable names for each of our variables.

automl names its variables by layer scope (read from automl's source, nothing of it is
imported): `backbone/efficientnet_model.py` for `efficientnet-bN/stem`, `blocks_k` (k counts
blocks over all stages) with `conv2d[_1]`, `depthwise_conv2d`, `tpu_batch_normalization[_1|_2]`
and `se/conv2d[_1]`; `efficientdet_arch.py` (TF1) and `tf2/efficientdet_keras.py` (TF2) for
`resample_p{N}/{conv2d,bn}`, `fpn_cells/cell_{c}/fnode{n}/{resample_{i}_{offset}_{len}/…,
WSM[_i], op_after_combine{len}/{conv,bn}}` and `class_net|box_net/{class-i, class-i-bn-level,
class-predict}`. Both schemes give the same names (the TF2 code loads TF1 checkpoints by
them); TF1 training checkpoints add `…/ExponentialMovingAverage` shadows, optimizer slots and
`global_step`, which is why the shadow is preferred when present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from effdet.errors import EffdetError
from effdet.model.bifpn import bifpn_nodes
from effdet.model.pretrained.transfer import Transfer

EMA_SUFFIX = "/ExponentialMovingAverage"
BN = ("gamma", "beta", "moving_mean", "moving_variance")
_BLOCK = re.compile(r"^block(\d)([a-z])_")


@dataclass(frozen=True)
class Target:
    """Where one automl variable goes: our variable path, and an index for fusion scalars."""

    path: str
    index: int | None = None


def _layer(names: dict[str, Target], source: str, ours: str, variables: tuple[str, ...],
           our_variables: tuple[str, ...] | None = None) -> None:
    for theirs, mine in zip(variables, our_variables or variables):
        names[f"{source}/{theirs}"] = Target(f"{ours}/{mine}")


def automl_names(model: keras.Model, backbone: str, min_level: int, max_level: int,
                 box_class_repeats: int, fpn_cell_repeats: int) -> dict[str, Target]:
    """automl variable name -> our variable for every automl variable this model has."""
    layer_names = {layer.name for layer in model.layers}
    names: dict[str, Target] = {}
    conv, sep = ("kernel",), ("depthwise_kernel", "pointwise_kernel", "bias")
    _layer(names, f"{backbone}/stem/conv2d", "stem_conv", conv)
    _layer(names, f"{backbone}/stem/tpu_batch_normalization", "stem_bn", BN)
    blocks = sorted({m.group(0)[:-1] for m in map(_BLOCK.match, layer_names) if m},
                    key=lambda p: (int(p[5]), p[6]))
    for k, block in enumerate(blocks):
        scope = f"{backbone}/blocks_{k}"
        expands = f"{block}_expand_conv" in layer_names
        convs = ["expand_conv", "project_conv"] if expands else ["project_conv"]
        bns = ["expand_bn", "bn", "project_bn"] if expands else ["bn", "project_bn"]
        for i, ours in enumerate(convs):
            _layer(names, f"{scope}/conv2d{'_' + str(i) if i else ''}", f"{block}_{ours}", conv)
        for i, ours in enumerate(bns):
            _layer(names, f"{scope}/tpu_batch_normalization{'_' + str(i) if i else ''}",
                   f"{block}_{ours}", BN)
        _layer(names, f"{scope}/depthwise_conv2d", f"{block}_dwconv", ("depthwise_kernel",),
               ("kernel",))
        _layer(names, f"{scope}/se/conv2d", f"{block}_se_reduce", ("kernel", "bias"))
        _layer(names, f"{scope}/se/conv2d_1", f"{block}_se_expand", ("kernel", "bias"))

    def resample(scope: str, ours: str) -> None:
        if f"{ours}_conv" in layer_names:
            _layer(names, f"{scope}/conv2d", f"{ours}_conv", ("kernel", "bias"))
            _layer(names, f"{scope}/bn", f"{ours}_bn", BN)

    for level in range(6, max_level + 1):
        resample(f"resample_p{level}", f"resample_p{level}")
    num_inputs = max_level - min_level + 1
    for cell in range(fpn_cell_repeats):
        for n, node in enumerate(bifpn_nodes(min_level, max_level)):
            scope, ours = f"fpn_cells/cell_{cell}/fnode{n}", f"fpn_cell{cell}_node{n}"
            for i, offset in enumerate(node.inputs):
                resample(f"{scope}/resample_{i}_{offset}_{num_inputs + n}", f"{ours}_input{i}")
                if f"{ours}_fusion" in layer_names and model.get_layer(f"{ours}_fusion").weights:
                    names[f"{scope}/WSM{'_' + str(i) if i else ''}"] = Target(
                        f"{ours}_fusion/fusion_weights", i)
            combine = f"{scope}/op_after_combine{num_inputs + n}"
            _layer(names, f"{combine}/conv", f"{ours}_conv", sep)
            _layer(names, f"{combine}/bn", f"{ours}_bn", BN)
    for kind in ("class", "box"):
        for i in range(box_class_repeats):
            _layer(names, f"{kind}_net/{kind}-{i}", f"{kind}_net_conv{i}", sep)
            for level in range(min_level, max_level + 1):
                _layer(names, f"{kind}_net/{kind}-{i}-bn-{level}",
                       f"{kind}_net_conv{i}_bn_p{level}", BN)
        _layer(names, f"{kind}_net/{kind}-predict", f"{kind}_net_predict", sep)
    return names


def checkpoint_prefix(path: Path) -> str | None:
    """The TF checkpoint a path names (prefix, `.index` file or directory), else None."""
    import tensorflow as tf

    if path.is_dir():
        latest = tf.train.latest_checkpoint(str(path))
        if latest:
            return latest
        indexes = sorted(path.glob("*.index"))
        return str(indexes[0])[:-len(".index")] if len(indexes) == 1 else None
    text = str(path)
    for suffix in (".index", ".data-00000-of-00001"):
        if text.endswith(suffix):
            text = text[:-len(suffix)]
    return text if Path(text + ".index").is_file() else None


def read_automl(prefix: str, names: dict[str, Target], model: keras.Model) -> Transfer:
    """Arrays for our variables from an automl checkpoint, EMA shadows preferred."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise EffdetError(f"{prefix}: not a readable TensorFlow checkpoint ({error})") from None
    available = reader.get_variable_to_shape_map()
    backbones = {name.split("/")[0] for name in available if name.startswith("efficientnet-")}
    wanted = {name.split("/")[0] for name in names if name.startswith("efficientnet-")}
    if backbones and backbones != wanted:
        raise EffdetError(f"{prefix}: the checkpoint's backbone is {', '.join(sorted(backbones))}"
                          f" but the model's is {', '.join(sorted(wanted))} (check --model_name)")
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    used: set[str] = set()
    for name, target in names.items():
        stored = name + EMA_SUFFIX if name + EMA_SUFFIX in available else name
        if stored not in available:
            continue
        value = np.asarray(reader.get_tensor(stored))
        used.update({name, name + EMA_SUFFIX} & set(available))
        sources.setdefault(target.path, name if target.index is None else name.rsplit("/", 1)[0])
        if target.index is None:
            arrays[target.path] = value
        else:
            fused = arrays.setdefault(target.path, np.zeros(shapes[target.path], np.float32))
            fused[target.index] = value
    if not arrays:
        # e.g. a Keras object-graph checkpoint (`…/.ATTRIBUTES/VARIABLE_VALUE` keys).
        raise EffdetError(f"{prefix}: none of its variables has an automl EfficientDet name "
                          f"(found e.g. {sorted(available)[:2]})")
    unused = sorted(set(available) - used)
    return Transfer(arrays, sources, unused)
