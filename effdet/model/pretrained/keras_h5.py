"""EfficientNet backbones saved by Keras: keras.applications (Keras 2 and 3) and TAO's NGC models.

keras.applications and TAO's `core/templates/efficientnet.py` name the layers alike
(`stem_conv`, `block2a_expand_conv`, … as ours); only the stored layout differs:
- legacy HDF5 (`.h5`/`.hdf5`, Keras 2 and Keras 3's `model.save("x.h5")`, TAO): groups per
  layer name, each with a `weight_names` attribute giving the variables in order;
- Keras 3 `.weights.h5`: groups named after layer *classes* in model order, so the file is
  read into the keras.applications model it came from (identified by its stem width and
  block count) and taken from there by layer name;
- `.keras`: a zip with the model's config, loaded with Keras' safe mode.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np

from effdet.errors import EffdetError
from effdet.model.pretrained.transfer import Transfer

# keras.applications constructor -> (stem filters, depthwise layers), from its round_filters /
# round_repeats over the B0 stages.
_APPLICATIONS = {
    "EfficientNetB0": (32, 16), "EfficientNetB1": (32, 23), "EfficientNetB2": (32, 23),
    "EfficientNetB3": (40, 26), "EfficientNetB4": (48, 32), "EfficientNetB5": (48, 39),
    "EfficientNetB6": (56, 45), "EfficientNetB7": (64, 55),
}


def _legacy_layers(h5: h5py.Group) -> dict[str, list[np.ndarray]]:
    group = h5["model_weights"] if "model_weights" in h5 else h5
    layers = {}
    for raw in group.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        names = [w.decode() if isinstance(w, bytes) else str(w)
                 for w in group[name].attrs.get("weight_names", [])]
        if names:
            layers[name] = [np.asarray(group[name][w]) for w in names]
    return layers


def _pick_application(h5: h5py.Group) -> keras.Model:
    layers = h5["layers"]
    stem = layers["conv2d"]["vars"]["0"].shape[-1]
    depthwise = sum(1 for name in layers if name.startswith("depthwise_conv2d"))
    top = "dense" in layers
    # B1 and B2 share stem width and depth; the final project conv width (320 vs 352) differs.
    candidates = [name for name, spec in _APPLICATIONS.items() if spec == (stem, depthwise)]
    if len(candidates) > 1:
        widths = {"EfficientNetB1": 320, "EfficientNetB2": 352}
        projects = [layers[n]["vars"]["0"].shape[-1] for n in layers
                    if n.startswith("conv2d") and "0" in layers[n]["vars"]
                    and layers[n]["vars"]["0"].shape[:2] == (1, 1)]
        candidates = [n for n in candidates if widths.get(n) in projects]
    if len(candidates) != 1:
        raise EffdetError("not a keras.applications EfficientNetB0-B7 weights file "
                          f"(stem width {stem}, {depthwise} depthwise layers)")
    build = getattr(keras.applications, candidates[0])
    return build(weights=None, include_top=top)


def _model_layers(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [keras.ops.convert_to_numpy(w) for w in layer.weights]
            for layer in model.layers if layer.weights}


def read_keras_layers(path: Path, kind: str) -> dict[str, list[np.ndarray]]:
    """Layer name -> its arrays in Keras' variable order, for `kind` "hdf5" or "keras"."""
    try:
        if kind == "keras":
            return _model_layers(keras.saving.load_model(path, compile=False, safe_mode=True))
        with h5py.File(path, "r") as h5:
            if "layer_names" in h5.attrs or "model_weights" in h5:
                return _legacy_layers(h5)
            if "layers" not in h5:
                raise EffdetError("an HDF5 file without Keras weights")
            model = _pick_application(h5)
        model.load_weights(path)
        return _model_layers(model)
    except EffdetError as error:
        raise EffdetError(f"{path}: {error}") from None
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise EffdetError(f"{path}: cannot read its Keras weights ({error})") from None


def keras_transfer(path: Path, kind: str, model: keras.Model) -> Transfer:
    """Arrays for our layers of the same name; the others are reported as unused."""
    layers = read_keras_layers(path, kind)
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    arrays, sources, unused = {}, {}, []
    for name, values in layers.items():
        layer = ours.get(name)
        if layer is None or len(layer.weights) != len(values):
            unused.extend(f"{name}/{i}" for i in range(len(values)))
            continue
        for variable, value in zip(layer.weights, values):
            arrays[variable.path] = value
            sources[variable.path] = variable.path
    if not arrays:
        raise EffdetError(f"{path}: none of its layers is a layer of this EfficientNet backbone")
    return Transfer(arrays, sources, sorted(unused))
