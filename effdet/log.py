"""Logging set-up shared by every task: one format, optional file, secrets scrubbed.

Records logged with `extra=PROGRESS` (a task started or finished, a training step) also go to
stdout when the log goes to a file: Snakemake shows a job's stdout on its console, so
`make demo` prints one line per step while the rule's log keeps everything.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

LOGGER_NAME = "effdet"
_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"
_REDACTED = "********"
PROGRESS = {"progress": True}


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
    """Route the effdet logger to stderr, or to `log_file` (TAO's --log_file) when given,
    with the progress records on stdout as well."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        _add_handler(logger, logging.FileHandler(log_file, encoding="utf-8"), _FORMAT)
        console = _add_handler(logger, logging.StreamHandler(sys.stdout), "%(message)s")
        console.addFilter(is_progress)
    else:
        _add_handler(logger, logging.StreamHandler(sys.stderr), _FORMAT)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger


def is_progress(record: logging.LogRecord) -> bool:
    return getattr(record, "progress", False)


def _add_handler(logger: logging.Logger, handler: logging.Handler, form: str) -> logging.Handler:
    handler.setFormatter(logging.Formatter(form))
    handler.addFilter(_secret_filter)
    logger.addHandler(handler)
    return handler
