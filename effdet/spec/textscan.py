"""A light scan of protobuf text format that records where each field is set.

protobuf's own parser reports neither which field a type error belongs to nor that a
singular field was set twice (its `Merge` silently keeps the last value, which is what TAO
does). This scan gives the loader both, without interpreting any value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<open>[{<])
  | (?P<close>[}>])
  | (?P<colon>:)
  | (?P<newline>\n)
  | (?P<space>[ \t\r\f\v,;]+)
  | (?P<word>[^\s{}<>:#"',;\[\]]+)
  | (?P<other>.)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class FieldSite:
    """One `name: value` (or `name { … }`) occurrence in the text."""

    path: tuple[str, ...]  # enclosing message fields, outermost first, then the field
    line: int  # 1-based
    column: int  # 1-based
    is_message: bool

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def scan_fields(text: str) -> list[FieldSite]:
    """Every field occurrence in document order; tolerant of syntax errors (it never raises)."""
    sites: list[FieldSite] = []
    stack: list[str] = []
    line, line_start = 1, 0
    pending: tuple[str, int, int] | None = None  # field name seen, waiting for ':' or '{'
    expect_value = False
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        column = match.start() - line_start + 1
        if kind == "newline":
            line, line_start = line + 1, match.end()
            continue
        if kind in ("space", "comment"):
            continue
        if kind == "open":
            if pending is not None:
                name, pline, pcol = pending
                sites.append(FieldSite((*stack, name), pline, pcol, True))
                stack.append(name)
                pending = None
            else:
                stack.append("?")
            expect_value = False
            continue
        if kind == "close":
            if stack:
                stack.pop()
            pending, expect_value = None, False
            continue
        if kind == "colon" and pending is not None:
            expect_value = True
            continue
        if expect_value and pending is not None:
            name, pline, pcol = pending
            sites.append(FieldSite((*stack, name), pline, pcol, False))
            pending, expect_value = None, False
            continue
        if kind == "word":
            pending = (match.group(), line, column)
    return sites


def field_at(sites: list[FieldSite], line: int, column: int) -> FieldSite | None:
    """The field whose occurrence starts last at or before (line, column)."""
    best = None
    for site in sites:
        if (site.line, site.column) <= (line, column):
            best = site
    return best
