"""The model key: from -k or the EFFDET_KEY environment variable, never shown anywhere."""

from __future__ import annotations

import os

from effdet.errors import EffdetError
from effdet.log import register_secret

KEY_ENV = "EFFDET_KEY"
# New models only: a key of a few characters is guessed in seconds. Older, shorter keys still
# decrypt the models they wrote.
MIN_KEY_LENGTH = 8


def resolve_key(cli_key: str | None, *, writes: bool = False) -> str:
    """The key; `writes` when the task encrypts new files with it (checked before any work)."""
    key = cli_key if cli_key is not None else os.environ.get(KEY_ENV)
    if not key:
        raise EffdetError(f"no model key: pass -k/--key or set {KEY_ENV}")
    register_secret(key)
    if writes:
        check_new_key(key)
    return key


def check_new_key(key: str) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise EffdetError(f"the model key is too short to encrypt a new model: it needs at least "
                          f"{MIN_KEY_LENGTH} characters (got {len(key)})")
