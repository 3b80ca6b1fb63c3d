"""Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", OPODIS 2014).

A reading is (wall milliseconds, counter): it follows physical time where it can and keeps
causality where wall clocks disagree, so a write made after seeing another always carries a
larger reading, even if its machine's clock is behind. Pure: the caller passes the wall-clock
reading in and persists the result; nothing here reads time or does I/O.

ClockDriftError is crdtim.errors' (re-exported here): errors.py is the package's bottom layer
and imports nothing, so the pure core may raise the one class callers catch as CrdtimError.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import ClockDriftError

__all__ = ["DEFAULT_MAX_DRIFT_MS", "ClockDriftError", "Hlc", "receive", "tick"]

#: A remote reading further than this ahead of our wall clock is refused: accepting it would
#: let one machine with a bad clock win every register for as long as its error lasts.
DEFAULT_MAX_DRIFT_MS = 5 * 60 * 1000


class Hlc(NamedTuple):
    wall: int
    counter: int


ZERO = Hlc(0, 0)


def tick(last: Hlc, now_ms: int) -> Hlc:
    """The reading for a local event that happens after `last` at wall time `now_ms`."""
    if now_ms > last.wall:
        return Hlc(now_ms, 0)
    return Hlc(last.wall, last.counter + 1)


def receive(last: Hlc, remote: Hlc, now_ms: int, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS) -> Hlc:
    """The clock after observing `remote`: at least as large as both `last` and `remote`.

    Raises ClockDriftError, leaving the clock as it was, if `remote` is more than
    `max_drift_ms` ahead of `now_ms`.
    """
    if remote.wall > now_ms + max_drift_ms:
        raise ClockDriftError(
            f"remote clock reading {remote.wall} ms is {remote.wall - now_ms} ms ahead of the "
            f"local wall clock (limit {max_drift_ms} ms)"
        )
    wall = max(last.wall, remote.wall, now_ms)
    if wall == last.wall and wall == remote.wall:
        counter = max(last.counter, remote.counter) + 1
    elif wall == last.wall:
        counter = last.counter + 1
    elif wall == remote.wall:
        counter = remote.counter + 1
    else:
        counter = 0
    return Hlc(wall, counter)
