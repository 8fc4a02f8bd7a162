"""Logging set-up shared by every task: one format, optional file, secrets scrubbed."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

LOGGER_NAME = "effdet"
_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"
_REDACTED = "********"


class SecretFilter(logging.Filter):
    """Replaces registered secrets in every record, whatever handler or formatter runs next.

    A last line of defence: no code path is meant to log the key, but a message built from
    user input (a path, an exception text) could still carry it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = redact(record.getMessage()), None
            if record.exc_info:
                # Formatters reuse exc_text when it is set: fill it in, scrubbed.
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_secret_filter = SecretFilter()


def register_secret(value: str) -> None:
    """Never let `value` reach a log line."""
    if value and value not in _secret_filter.secrets:
        _secret_filter.secrets.add(value)
        # Whole tokens only (not inside a longer run of letters, digits or _), so a short key
        # such as "k" leaves the words around it alone. Longest first: a key that contains
        # another is replaced whole.
        alternatives = "|".join(re.escape(s) for s in sorted(_secret_filter.secrets, key=len,
                                                              reverse=True))
        _secret_filter.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def redact(text: str) -> str:
    pattern = _secret_filter.pattern
    return pattern.sub(_REDACTED, text) if pattern is not None else text


def setup_logging(log_file: str | Path | None = None, verbose: bool = False) -> logging.Logger:
    """Route the effdet logger to stderr, or to `log_file` (TAO's --log_file) when given."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_secret_filter)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger
