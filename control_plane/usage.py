"""A run's usage: the sum over its nodes of each numeric key of their usage.

Nodes report usage (tokens, cost, ...) through NodeContext.add_usage; it is
stored with the node when the node succeeds, replacing what an earlier run of
the node stored. The run keeps the total (RunRow.usage, a stored column), which
the actor adjusts by the node's old and new usage as the node's usage is
stored: no pass over a run's nodes per node. Ints stay ints (a float among
them makes the sum a float); other values (text, bools, NaN, nested objects)
are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def numeric(usage: Mapping[str, Any] | None) -> dict[str, int | float]:
    """The keys of `usage` with a finite number (not a bool) as their value."""
    if not usage:
        return {}
    out: dict[str, int | float] = {}
    for key, value in usage.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, int):
            out[key] = int(value)
        elif math.isfinite(value):
            out[key] = float(value)
    return out


def total(usages: Iterable[Mapping[str, Any] | None]) -> dict[str, int | float] | None:
    """The sum of each numeric key over `usages`; None when none has one."""
    sums: dict[str, int | float] = {}
    for usage in usages:
        for key, value in numeric(usage).items():
            sums[key] = sums.get(key, 0) + value
    return sums or None


def adjusted(
    run_total: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    others: Iterable[Mapping[str, Any] | None],
) -> dict[str, int | float] | None:
    """The run's total once one node's usage goes from `old` to `new`.

    A new dict (the old one may be in a batch not written yet). `others` is
    the usage of the run's other nodes, read only when a key of `old` is not
    in `new`: whether any other node still reports the key decides whether the
    total keeps it (at 0 or so) or drops it.
    """
    before, after = numeric(old), numeric(new)
    if before == after:
        return dict(run_total) if run_total else None
    sums = numeric(run_total)
    for key, value in before.items():
        if key in after:
            sums[key] = sums.get(key, 0) - value + after[key]
        elif key in sums:
            sums[key] = sums[key] - value
    for key, value in after.items():
        if key not in before:
            sums[key] = sums.get(key, 0) + value
    gone = before.keys() - after.keys()
    if gone:
        reported: set[str] = set()
        for usage in others:
            reported.update(gone.intersection(numeric(usage)))
            if reported == gone:
                break
        for key in gone - reported:
            sums.pop(key, None)
    return sums or None
