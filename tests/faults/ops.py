"""The operation mix of both harnesses, and how a call is recorded as acknowledged.

`draw` picks an operation's intent; `perform` makes the call on a `Replica` and, once it has
returned (the operation is acknowledged: its transaction committed), records it as a
`checker.AckedOp`: the intent as drawn, the log entry its commit made (read through the
public `changes_since` and `delta_interval`), and `checker.call_defect`'s finding from the
conversation's fields just before and just after the call.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from crdtim.errors import LogTrimmedError
from crdtim.replica import Replica

from .checker import FLAGS, KINDS, AckedOp, Intent, call_defect

__all__ = ["draw", "call", "perform", "readable"]


def draw(rng: random.Random, cids: Sequence[str], text: str, max_seq: int,
         now_ms: int) -> Intent:
    """One operation: a title, an enable or disable of a flag, a message arrival (sent up to
    5 s before `now_ms`) or a read marker, on one of `cids`."""
    cid = rng.choice(cids)
    kind = rng.choice(KINDS)
    if kind == "title":
        return Intent(kind, cid, text=text)
    if kind in ("enable", "disable"):
        return Intent(kind, cid, flag=rng.choice(FLAGS))
    if kind == "arrive":
        return Intent(kind, cid, text=text, seq=rng.randint(1, max_seq),
                      at=max(0, now_ms - rng.randint(0, 5000)))
    return Intent(kind, cid, seq=rng.randint(0, max_seq))


def readable(r: Replica, i: Intent) -> Intent:
    """The intent, with a read marker lowered to what has arrived at `r`: mark_read above
    the conversation's last_seq is refused (specs/crdt.md §6), and a device reads only the
    messages it has. The draw is unchanged (same random numbers), so seeds still replay."""
    if i.kind != "read":
        return i
    seen = r.get(i.cid)
    return dataclasses.replace(i, seq=min(i.seq, seen.last_seq if seen else 0))


def call(r: Replica, i: Intent) -> None:
    """The Replica API call the intent names."""
    if i.kind == "title":
        r.set_title(i.cid, i.text)
    elif i.kind == "enable":
        r.enable(i.cid, i.flag)
    elif i.kind == "disable":
        r.disable(i.cid, i.flag)
    elif i.kind == "arrive":
        r.message_arrived(i.cid, i.seq, i.text, at=i.at)
    else:
        r.mark_read(i.cid, i.seq)


def perform(r: Replica, i: Intent, *, exclusive: bool) -> AckedOp:
    """Make the call and record it as acknowledged. `exclusive`: nothing else writes to `r`
    meanwhile (the simulation); else a server may apply remote deltas beside the call."""
    head = r.head
    before = r.state().fields(i.cid)
    call(r, i)
    # Returned: acknowledged. Its log entry is the one entry after `head` made here (only
    # this caller writes locally; remote deltas the server applied meanwhile are "remote").
    local = sorted({seq for seq, change in r.changes_since(head) if change.origin == "local"})
    delta, unrecorded, extra = None, False, None
    if local:
        try:
            _, delta = r.delta_interval(local[0] - 1, max_entries=1)
        except LogTrimmedError:
            unrecorded = True
        if len(local) > 1:
            extra = f"one call logged {len(local)} entries"
    elif r.log_floor > head:
        unrecorded = True  # a trim may have dropped it before it was read
    after = r.state().fields(i.cid)
    defect = call_defect(r.id, i, None if delta is None else delta.fields(i.cid), before, after,
                         exclusive=exclusive) if not unrecorded else None
    return AckedOp(r.id, i, delta, defect or extra, unrecorded)
