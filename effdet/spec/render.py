"""Human-readable listing of a resolved configuration, values from TAO's defaults marked."""

from __future__ import annotations

from effdet.spec.config import ExperimentConfig


def render_config(config: ExperimentConfig) -> str:
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"{section} {{")
        width = max(len(name) for name in values)
        for name, value in values.items():
            mark = "  (TAO default)" if f"{section}.{name}" in config.defaulted else ""
            lines.append(f"  {name:<{width}}  {_show(value)}{mark}")
        lines.append("}")
    return "\n".join(lines)


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return str(value)
