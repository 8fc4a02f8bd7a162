"""Errors a user can cause; the CLI prints them as one line and exits non-zero."""


class EffdetError(Exception):
    """A problem with the user's input (file, spec, flag), reported without a traceback."""

    exit_code = 1
