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

from crdtim.errors import LogTrimmedError, StoreError
from crdtim.replica import InvalidArgument, Replica

from .checker import FLAGS, KINDS, AckedOp, Intent, call_defect

__all__ = ["Refused", "draw", "call", "perform", "readable"]


class Refused(Exception):
    """The replica refused the call with `StoreError` (a full disk: specs/storage.md §6), or
    refused an append or edit of a message a peer deleted meanwhile: not acknowledged, and
    nothing of it may have been committed."""

#: Message operations (specs/crdt.md §8.5) and their weights: appends weigh most, as a
#: streamed reply is many of them.
_MESSAGE_MIX = (("post", 3), ("reply", 1), ("regenerate", 1), ("append", 5), ("edit", 1),
                ("switch", 1), ("delete_message", 0.5))


def draw(rng: random.Random, cids: Sequence[str], text: str, max_seq: int,
         now_ms: int, r: Replica | None = None, messages: float = 0.0) -> Intent:
    """One operation: a title, an enable or disable of a flag, a message arrival (sent up to
    5 s before `now_ms`) or a read marker, on one of `cids`; or, with probability `messages`
    (drawn only when it is not 0, so that seeds made without messages replay), an operation
    on the message history of `r`'s conversation."""
    cid = rng.choice(cids)
    if messages and rng.random() < messages:
        assert r is not None
        return _message_op(rng, r, cid, text)
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
    elif i.kind == "post":
        r.post(i.cid, i.text, role=i.role or "user", reply_to=i.ref or None, id=i.mid)
    elif i.kind == "regenerate":
        r.regenerate(i.cid, i.ref, i.text, id=i.mid)
    elif i.kind == "append":
        r.append(i.cid, i.mid, i.text)
    elif i.kind == "edit":
        r.edit(i.cid, i.mid, i.text)
    elif i.kind == "switch":
        r.switch(i.cid, i.mid)
    elif i.kind == "delete_message":
        r.delete_message(i.cid, i.mid)
    else:
        r.mark_read(i.cid, i.seq)


def perform(r: Replica, i: Intent, *, exclusive: bool) -> AckedOp:
    """Make the call and record it as acknowledged. `exclusive`: nothing else writes to `r`
    meanwhile (the simulation); else a server may apply remote deltas beside the call."""
    head = r.head
    before = r.state().fields(i.cid)
    try:
        call(r, i)
    except StoreError as e:  # only the call itself: a read after it failing is no refusal
        raise Refused(str(e)) from e
    except InvalidArgument as e:
        # Beside a server, a peer's delete may land between the draw (a live message) and
        # the append or edit, which a deleted message refuses (specs/crdt.md §8.5).
        if i.kind not in ("append", "edit") or "deleted" not in str(e):
            raise
        raise Refused(str(e)) from e
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
    elif r.log_floor > head and i.kind not in ("switch", "delete_message"):
        # A trim may have dropped it before it was read. (A switch or a delete is judged by
        # the state alone, and is often a no-op that logs nothing: a switch to a visible
        # message, a delete of a deleted one.)
        unrecorded = True
    after = r.state().fields(i.cid)
    defect = call_defect(r.id, i, None if delta is None else delta.fields(i.cid), before, after,
                         exclusive=exclusive) if not unrecorded else None
    return AckedOp(r.id, i, delta, defect or extra, unrecorded)


def _message_op(rng: random.Random, r: Replica, cid: str, text: str) -> Intent:
    """A message operation on what `r` holds of `cid`: a new id (from `rng`, so that seeds
    replay) for a post or regenerate; a known message for the others (a live one for
    append and edit, which a deleted message refuses)."""
    h = r.state().fields(cid).get("messages")
    known = [] if h is None else sorted(m for m, s in h.messages.items() if s.header is not None)
    live = [m for m in known if not h.messages[m].deleted] if h is not None else []
    kinds, weights = zip(*_MESSAGE_MIX)
    kind = rng.choices(kinds, weights)[0]
    new_id = f"{r.id[:4]}-{rng.getrandbits(40):010x}"
    if not known or kind == "post" or (kind in ("append", "edit") and not live):
        role = rng.choice(("user", "user", "assistant"))
        return Intent("post", cid, text=text, mid=new_id, role=role)
    if kind == "reply":
        return Intent("post", cid, text=text, mid=new_id, ref=rng.choice(known),
                      role=rng.choice(("user", "assistant")))
    if kind == "regenerate":
        return Intent("regenerate", cid, text=text, mid=new_id, ref=rng.choice(known))
    if kind in ("append", "edit"):
        chunk = f"{text}{rng.randrange(100)} " if kind == "append" else text
        return Intent(kind, cid, text=chunk, mid=rng.choice(live))
    return Intent(kind, cid, mid=rng.choice(known))
