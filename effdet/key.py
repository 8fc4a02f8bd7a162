"""The model key: from -k or the EFFDET_KEY environment variable, never shown anywhere."""

from __future__ import annotations

import os

from effdet.errors import EffdetError
from effdet.log import register_secret

KEY_ENV = "EFFDET_KEY"


def resolve_key(cli_key: str | None) -> str:
    key = cli_key if cli_key is not None else os.environ.get(KEY_ENV)
    if not key:
        raise EffdetError(f"no model key: pass -k/--key or set {KEY_ENV}")
    register_secret(key)
    return key
