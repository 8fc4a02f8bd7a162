"""TAO-compatible experiment spec files: schema, loader and the resolved configuration."""

from effdet.spec.config import ExperimentConfig
from effdet.spec.loader import SpecError, load_spec, parse_spec, path_warnings

__all__ = ["ExperimentConfig", "SpecError", "load_spec", "parse_spec", "path_warnings"]
