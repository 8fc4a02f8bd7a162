"""Turn a list of input problems into the one-line error the CLI shows."""

from __future__ import annotations

from collections.abc import Sequence

from effdet.errors import EffdetError

SHOWN = 3


def problems_error(where: str, problems: Sequence[str]) -> EffdetError:
    """One line naming the first few problems and how many there are in all.

    Users fix inputs in batches, so the count tells them whether the first culprit is a
    one-off or a pattern.
    """
    flat = [" ".join(p.split()) for p in problems]
    if len(flat) == 1:
        return EffdetError(f"{where}: {flat[0]}")
    shown = "; ".join(flat[:SHOWN])
    more = f" (and {len(flat) - SHOWN} more)" if len(flat) > SHOWN else ""
    return EffdetError(f"{where}: {len(flat)} problems: {shown}{more}")


def raise_problems(where: str, problems: Sequence[str]) -> None:
    """Raise `problems_error` when there is anything to report."""
    if problems:
        raise problems_error(where, problems)
