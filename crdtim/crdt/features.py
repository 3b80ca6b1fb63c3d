"""Delta mutators of the conversation features (specs/crdt.md §6, "Feature mutators"):
archive, delete for me, mark as unread, mute until and members' read positions.

Each takes one conversation's current fields and returns the delta (only the fields that
change, none of them bottom), like `message_arrived_delta`; the conversation map and the
replica call them. The view of these fields is in conversation.py. Pure: `now` and stamps
are passed in; no I/O, no clock reads.
"""

from __future__ import annotations

from typing import Any

from .flag import Flag
from .lww import LwwInt, Stamp
from .maxmap import MaxMap
from .maxreg import MaxReg

__all__ = [
    "archive_delta",
    "delete_delta",
    "mark_read_by_delta",
    "mark_read_delta",
    "mark_unread_delta",
    "mute_delta",
    "unarchive_delta",
]

Fields = dict[str, Any]


def _put(delta: Fields, name: str, state: Any) -> None:
    if not state.is_bottom():
        delta[name] = state


def _flag(state: Fields, name: str) -> Flag:
    f: Flag = state.get(name, Flag.bottom())
    return f


def _reg(state: Fields, name: str) -> MaxReg:
    r: MaxReg = state.get(name, MaxReg.bottom())
    return r


def last_at(state: Fields) -> int:
    """The message time of the last message shown (0 if none)."""
    last = state.get("last_message")
    return 0 if last is None else int(last.stamp.wall)


def archive_delta(state: Fields, replica: str, keep: bool = False) -> Fields:
    """Archive at the conversation's current position: a later message (higher seq or newer
    time) brings it back, unless `keep`."""
    delta: Fields = {"archived": _flag(state, "archived").enable(replica)}
    _put(delta, "archived_seq", _reg(state, "archived_seq").raise_to(_reg(state, "last_seq").value))
    _put(delta, "archived_at", _reg(state, "archived_at").raise_to(last_at(state)))
    keep_flag = _flag(state, "archive_keep")
    _put(delta, "archive_keep", keep_flag.enable(replica) if keep else keep_flag.disable())
    return delta


def unarchive_delta(state: Fields) -> Fields:
    delta: Fields = {}
    _put(delta, "archived", _flag(state, "archived").disable())
    _put(delta, "archive_keep", _flag(state, "archive_keep").disable())
    return delta


def delete_delta(state: Fields, now: int) -> Fields:
    """Delete for me: clear through max(now, last_at) and read everything seen. The join
    then drops the last message at or before that time (clear_covered)."""
    delta: Fields = {}
    _put(delta, "cleared_at", _reg(state, "cleared_at").raise_to(max(now, last_at(state))))
    _put(delta, "read_seq", _reg(state, "read_seq").raise_to(_reg(state, "last_seq").value))
    return delta


def mark_unread_delta(state: Fields, replica: str) -> Fields:
    return {"marked_unread": _flag(state, "marked_unread").enable(replica)}


def mark_read_delta(state: Fields, seq: int) -> Fields:
    """Read up to `seq`; removes the marks as unread seen so far (a concurrent one wins)."""
    delta: Fields = {}
    _put(delta, "read_seq", _reg(state, "read_seq").raise_to(seq))
    _put(delta, "marked_unread", _flag(state, "marked_unread").disable())
    return delta


def mute_delta(state: Fields, replica: str, until: int, stamp: Stamp) -> Fields:
    """Mute until `until` ms (0: until unmuted); `stamp` a fresh clock stamp."""
    return {"muted": _flag(state, "muted").enable(replica), "muted_until": LwwInt(stamp, until)}


def mark_read_by_delta(state: Fields, member: str, seq: int) -> Fields:
    current: MaxMap = state.get("read_by", MaxMap.bottom())
    delta: Fields = {}
    _put(delta, "read_by", current.raise_to(member, seq))
    return delta
