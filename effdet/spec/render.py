"""Human-readable listing of a resolved configuration, values from TAO's defaults marked."""

from __future__ import annotations

from effdet.spec.config import EFFDET_DEFAULTS, ExperimentConfig


def render_config(config: ExperimentConfig) -> str:
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"{section} {{")
        width = max(len(name) for name in values)
        for name, value in values.items():
            dotted = f"{section}.{name}"
            mark = ("" if dotted not in config.defaulted
                    else "  (effdet default)" if dotted in EFFDET_DEFAULTS else "  (TAO default)")
            lines.append(f"  {name:<{width}}  {render_value(value)}{mark}")
        lines.append("}")
    return "\n".join(lines)


def render_value(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "(" + ", ".join(render_value(v) for v in value) + ")"
    return str(value)
