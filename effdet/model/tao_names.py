"""TAO's layer names for ours, so TAO users' `-el` and `skip_checkpoint_variables` work.

TAO's efficientdet_tf1 (`nvidia_tao_tf1/cv/efficientdet/models/efficientdet_arch.py` and
`utils_keras.py`) names its backbone as keras.applications (as we do), and the rest:
`p6`/`p6_bn` (extra levels), `bifpn{i}_{offset}_{len}_{cell}[_bn]` (node inputs),
`weighted_fusion_{node}_{cell}`, `after_combine_dw_conv_{node}_{cell}`, `bifpn_bn_{node}_{cell}`,
`class-{i}`, `class-{i}-bn-{level}`, `class-predict` and the same for `box`.
"""

from __future__ import annotations

import re

import keras

from effdet.model.bifpn import bifpn_nodes

_FPN = re.compile(r"^fpn_cell(\d+)_node(\d+)_(fusion|conv|bn|input(\d+)_(conv|bn))$")
_HEAD = re.compile(r"^(class|box)_net_(predict|conv(\d+)(?:_bn_p(\d+))?)$")
_EXTRA = re.compile(r"^resample_p(\d+)_(conv|bn)$")


def tao_layer_names(model: keras.Model, min_level: int, max_level: int) -> dict[str, str]:
    """Our layer name -> TAO's, for every layer whose name differs from TAO's."""
    nodes = bifpn_nodes(min_level, max_level)
    num_inputs = max_level - min_level + 1
    names = {}
    for layer in model.layers:
        name = layer.name
        if match := _EXTRA.match(name):
            names[name] = f"p{match.group(1)}" + ("_bn" if match.group(2) == "bn" else "")
        elif match := _FPN.match(name):
            cell, node, part = int(match.group(1)), int(match.group(2)), match.group(3)
            if match.group(4) is not None:
                i = int(match.group(4))
                base = f"bifpn{i}_{nodes[node].inputs[i]}_{num_inputs + node}_{cell}"
                names[name] = base + ("_bn" if match.group(5) == "bn" else "")
            else:
                names[name] = {"fusion": f"weighted_fusion_{node}_{cell}",
                               "conv": f"after_combine_dw_conv_{node}_{cell}",
                               "bn": f"bifpn_bn_{node}_{cell}"}[part]
        elif match := _HEAD.match(name):
            kind, conv, level = match.group(1), match.group(3), match.group(4)
            if conv is None:
                names[name] = f"{kind}-predict"
            else:
                names[name] = f"{kind}-{conv}" + (f"-bn-{level}" if level else "")
    return names


def resolve_layer_names(requested: tuple[str, ...] | list[str], model: keras.Model,
                        min_level: int, max_level: int) -> tuple[set[str], list[str]]:
    """Our layers named by `requested` (ours or TAO's names), and the names matching none."""
    ours = {layer.name for layer in model.layers}
    by_tao = {tao: mine for mine, tao in tao_layer_names(model, min_level, max_level).items()}
    found, unknown = set(), []
    for name in requested:
        if name in ours:
            found.add(name)
        elif name in by_tao:
            found.add(by_tao[name])
        else:
            unknown.append(name)
    return found, unknown
