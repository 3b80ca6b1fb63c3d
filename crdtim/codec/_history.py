"""The message history's encoding (specs/crdt.md §7, "Messages"): a conversation's `History`
as the field of tag 15, and the storage records of one message and one group choice.

```
history = [{mid: message, ...}, {group: [wall, counter, replica_index, chosen], ...}]
message = [header or nil, base or nil, [append, ...], deleted]
header  = [parent or nil, origin or nil, role, author or nil, at, seq or nil,
           wall, counter, replica_index]                      # created stamp last
base    = [wall, counter, replica_index, text]
append  = [wall, counter, replica_index, base_wall, base_counter, base_replica_index, text]
```

The decoder accepts only canonical states, exactly as MessageState.make and History.make
would leave them (a deleted message with no text, appends or author; no append on a base
older than the message's; appends strictly increasing; no bottom message), and refuses
anything else with a DecodeError naming the conversation, the field, the message and the
part. It checks inline and builds the message text only on failure: one validating path, no
fast/slow split, since a history's items are few kinds of small arrays. Nothing decoded can
break a lattice invariant, and no exception but DecodeError escapes. No msgpack here.
"""

from __future__ import annotations

from typing import Any, NoReturn

from ..crdt import Append, Header, History, Lww, MessageState, Stamp
from ..errors import DecodeError
from ._limits import (
    FORMAT_VERSION,
    MAX_COUNTER,
    MAX_INT,
    MAX_MESSAGE_ID_BYTES,
    MAX_REPLICA_ID,
    STORAGE_LIMITS,
    Limits,
)
from ._msgpack import pack, unpack
from ._validate import dec_header

_tuple_new = tuple.__new__
_NO_TEXT = Lww.bottom()
_NO_APPENDS: frozenset[Append] = frozenset()


# -- encoding ------------------------------------------------------------------------------------


def encode_history(h: History, ids: dict[str, int]) -> list[Any]:
    """A History as its field encoding; `ids` maps replica ids to table indexes and grows as
    new ones are met (as in _encode)."""
    messages = {mid: encode_message_state(m, ids) for mid, m in h.messages.items()}
    choices = {}
    for group, c in h.choices.items():  # after the messages: ids in order of first use
        wall, counter, replica = c.stamp
        choices[group] = [wall, counter, ids.setdefault(replica, len(ids)), c.value]
    return [messages, choices]


def encode_message_state(m: MessageState, ids: dict[str, int]) -> list[Any]:
    h = m.header
    if h is None:
        header = None
    else:
        wall, counter, replica = h.created
        header = [h.parent, h.origin, h.role, h.author, h.at, h.seq,
                  wall, counter, ids.setdefault(replica, len(ids))]
    b = m.base
    if b.is_bottom():
        base = None
    else:
        wall, counter, replica = b.stamp
        base = [wall, counter, ids.setdefault(replica, len(ids)), b.value]
    appends = []
    for a in sorted(m.appends) if len(m.appends) > 1 else m.appends:
        (wall, counter, replica), (bwall, bcounter, breplica), text = a
        i = ids.setdefault(replica, len(ids))
        appends.append([wall, counter, i, bwall, bcounter, ids.setdefault(breplica, len(ids)),
                        text])
    return [header, base, appends, m.deleted]


def encode_message(m: MessageState) -> bytes:
    """One message's state as stored (one record per message): `[version, [replica ids],
    message]`. `m` is never bottom (a History holds none)."""
    ids: dict[str, int] = {}
    body = encode_message_state(m, ids)
    return pack([FORMAT_VERSION, list(ids), body])


def encode_choice(c: Lww) -> bytes:
    """One version group's choice as stored: `[version, [replica id], [wall, counter, 0,
    chosen]]`. `c` is never bottom (a History holds none)."""
    wall, counter, replica = c.stamp
    return pack([FORMAT_VERSION, [replica], [wall, counter, 0, c.value]])


# -- decoding ------------------------------------------------------------------------------------


def decode_message(data: bytes) -> MessageState:
    """A record of encode_message -> the message's state, with STORAGE_LIMITS (it runs on
    every history page read); DecodeError naming what is wrong for anything else."""
    rids, body = _record(data, "message")
    return decode_message_state(body, rids, len(rids), STORAGE_LIMITS, "message")


def decode_choice(data: bytes) -> Lww:
    """A record of encode_choice -> the group's choice; DecodeError for anything else."""
    rids, body = _record(data, "choice")
    return _choice(body, rids, len(rids), STORAGE_LIMITS, "choice")


def _record(data: bytes, what: str) -> tuple[list[str], Any]:
    """(replica table, body) of a stored record: the checks of _decode.header_or_none inline
    (that module imports this one), dec_header to name what is wrong."""
    obj = unpack(data, STORAGE_LIMITS.max_bytes)
    if type(obj) is list and len(obj) == 3:
        version, rids, body = obj
        if type(version) is int and version == FORMAT_VERSION and type(rids) is list:
            for rid in rids:
                if type(rid) is not str or not 0 < len(rid) <= MAX_REPLICA_ID or "\x00" in rid:
                    break
            else:
                return rids, body
    return dec_header(obj, STORAGE_LIMITS, what)


def decode_history(x: Any, rids: list[str], limits: Limits, what: str) -> History:
    """A History field's encoding -> the History (bottom for `[{}, {}]`, dropped by the
    caller like any bottom field)."""
    if type(x) is not list or len(x) != 2:
        raise DecodeError(f"{what}: expected [messages, choices], got {_shape(x)}")
    messages_x, choices_x = x
    if type(messages_x) is not dict:
        raise DecodeError(f"{what} messages: expected a map of message id -> message, "
                          f"got {_shape(messages_x)}")
    if type(choices_x) is not dict:
        raise DecodeError(f"{what} choices: expected a map of group id -> choice, "
                          f"got {_shape(choices_x)}")
    n = len(messages_x) + len(choices_x)
    if n > limits.max_messages:
        raise DecodeError(f"{what}: {n} messages and choices is over the limit of "
                          f"{limits.max_messages}")
    nrids = len(rids)
    max_id = limits.max_message_id
    messages = {}
    for mid, mx in messages_x.items():
        if not _valid_id(mid, max_id):
            _refuse_id(mid, f"{what} message id", limits)
        messages[mid] = decode_message_state(mx, rids, nrids, limits, f"{what} message {mid!r}")
    choices = {}
    for group, cx in choices_x.items():
        if not _valid_id(group, max_id):
            _refuse_id(group, f"{what} group id", limits)
        choices[group] = _choice(cx, rids, nrids, limits, f"{what} choice of {group!r}")
    # Canonical by construction: no message or choice decoded here is bottom.
    return History(messages, choices)


#: An id of at most this many code points is at most MAX_MESSAGE_ID_BYTES UTF-8 bytes
#: (4 bytes a code point at most): its bytes need not be counted.
_ASCII_SAFE = MAX_MESSAGE_ID_BYTES // 4


def _valid_id(x: Any, max_id: int) -> bool:
    return (type(x) is str and 0 < len(x) <= max_id and "\0" not in x
            and (len(x) <= _ASCII_SAFE or len(x.encode()) <= MAX_MESSAGE_ID_BYTES))


def _refuse_id(x: Any, what: str, limits: Limits) -> NoReturn:
    """Raise the DecodeError naming why `x` is not a message id."""
    if type(x) is not str:
        raise DecodeError(f"{what}: expected a string, got {_shape(x)}")
    if not 0 < len(x) <= limits.max_message_id:
        raise DecodeError(f"{what} {x!r:.80}: length {len(x)} is out of range "
                          f"1..{limits.max_message_id}")
    if "\0" in x:
        raise DecodeError(f"{what} {x!r:.80}: holds a NUL character")
    raise DecodeError(f"{what} {x!r:.80}: {len(x.encode())} UTF-8 bytes is over the limit of "
                      f"{MAX_MESSAGE_ID_BYTES}")


def _optional_id(x: Any, limits: Limits, what: str) -> str | None:
    if x is not None and not _valid_id(x, limits.max_message_id):
        _refuse_id(x, what, limits)
    mid: str | None = x
    return mid


def _stamp(wall: Any, counter: Any, i: Any, rids: list[str], nrids: int, what: str) -> Stamp:
    if (type(wall) is int and type(counter) is int and type(i) is int and 0 <= wall <= MAX_INT
            and 0 <= counter <= MAX_COUNTER and 0 <= i < nrids):
        return _tuple_new(Stamp, (wall, counter, rids[i]))
    for value, name, hi in ((wall, "wall time", MAX_INT), (counter, "counter", MAX_COUNTER),
                            (i, "replica index", nrids - 1)):
        if type(value) is not int:
            raise DecodeError(f"{what} {name}: expected an integer, got {_shape(value)}")
        if not 0 <= value <= hi:
            raise DecodeError(f"{what} {name}: {value} is out of range 0..{hi}")
    raise AssertionError  # unreachable: one of the three is wrong


def _text(x: Any, max_bytes: int, what: str) -> str:
    """A text of at most `max_bytes` UTF-8 bytes (counted only when it could be over)."""
    if type(x) is not str:
        raise DecodeError(f"{what}: expected a string, got {_shape(x)}")
    if len(x) * 4 > max_bytes:
        size = len(x.encode())  # valid UTF-8: msgpack decoded it
        if size > max_bytes:
            raise DecodeError(f"{what}: {size} UTF-8 bytes is over the limit of {max_bytes}")
    return x


def _bounded_str(x: Any, lo: int, hi: int, what: str) -> str:
    if type(x) is not str:
        raise DecodeError(f"{what}: expected a string, got {_shape(x)}")
    if not lo <= len(x) <= hi:
        raise DecodeError(f"{what}: length {len(x)} is out of range {lo}..{hi}")
    return x


def _choice(x: Any, rids: list[str], nrids: int, limits: Limits, what: str) -> Lww:
    if type(x) is not list or len(x) != 4:
        raise DecodeError(f"{what}: expected [wall, counter, replica, message id], "
                          f"got {_shape(x)}")
    wall, counter, i, chosen = x
    stamp = _stamp(wall, counter, i, rids, nrids, what)
    if not _valid_id(chosen, limits.max_message_id):
        _refuse_id(chosen, f"{what} chosen id", limits)
    # Never bottom: replica ids are not empty.
    return Lww(stamp, chosen)


def _header(x: Any, rids: list[str], nrids: int, limits: Limits, what: str) -> Header:
    if type(x) is not list or len(x) != 9:
        raise DecodeError(f"{what}: expected [parent, origin, role, author, at, seq, wall, "
                          f"counter, replica], got {_shape(x)}")
    parent, origin, role, author, at, seq, wall, counter, i = x
    parent = _optional_id(parent, limits, f"{what} parent")
    origin = _optional_id(origin, limits, f"{what} origin")
    if type(role) is not str or not 0 < len(role) <= limits.max_role:
        _bounded_str(role, 1, limits.max_role, f"{what} role")
    if author is not None and (type(author) is not str
                               or not 0 < len(author) <= limits.max_author):
        _bounded_str(author, 1, limits.max_author, f"{what} author")
    if type(at) is not int or not 0 <= at <= MAX_INT:
        _int_refused(at, f"{what} at")
    if seq is not None and (type(seq) is not int or not 0 <= seq <= MAX_INT):
        _int_refused(seq, f"{what} seq")
    created = _stamp(wall, counter, i, rids, nrids, f"{what} created")
    return Header(parent, origin, role, author, at, seq, created)


def _int_refused(x: Any, what: str) -> NoReturn:
    if type(x) is not int:
        raise DecodeError(f"{what}: expected an integer, got {_shape(x)}")
    raise DecodeError(f"{what}: {x} is out of range 0..{MAX_INT}")


def decode_message_state(
    x: Any, rids: list[str], nrids: int, limits: Limits, what: str
) -> MessageState:
    """One message's encoding -> its canonical, non-bottom state; refused if not canonical."""
    if type(x) is not list or len(x) != 4:
        raise DecodeError(f"{what}: expected [header, base, appends, deleted], got {_shape(x)}")
    header_x, base_x, appends_x, deleted = x
    if type(deleted) is not bool:
        raise DecodeError(f"{what} deleted: expected a boolean, got {_shape(deleted)}")
    header = None if header_x is None else _header(header_x, rids, nrids, limits,
                                                    f"{what} header")
    if type(appends_x) is not list:
        raise DecodeError(f"{what} appends: expected an array, got {_shape(appends_x)}")
    if deleted:
        # A tombstone (specs/crdt.md §8.2.3): nothing but the header, without its author.
        if base_x is not None or appends_x:
            raise DecodeError(f"{what}: a deleted message holds text (not canonical)")
        if header is not None and header.author is not None:
            raise DecodeError(f"{what}: a deleted message keeps its author (not canonical)")
        return MessageState(header, _NO_TEXT, _NO_APPENDS, True)
    if base_x is None:
        base = _NO_TEXT
    elif type(base_x) is list and len(base_x) == 4:
        wall, counter, i, text = base_x
        base = Lww(_stamp(wall, counter, i, rids, nrids, f"{what} base"),
                   _text(text, limits.max_message_text, f"{what} base text"))
    else:
        raise DecodeError(f"{what} base: expected [wall, counter, replica, text], "
                          f"got {_shape(base_x)}")
    if not appends_x:
        if header is None and base_x is None:
            raise DecodeError(f"{what}: an empty message (bottom; not canonical)")
        return MessageState(header, base, _NO_APPENDS, False)
    if len(appends_x) > limits.max_appends:
        raise DecodeError(f"{what}: {len(appends_x)} appends is over the limit of "
                          f"{limits.max_appends}")
    appends = []
    floor = base.stamp
    max_append_text = limits.max_append_text
    previous = None
    for k, ax in enumerate(appends_x):
        if type(ax) is not list or len(ax) != 7:
            raise DecodeError(f"{what} append {k}: expected [wall, counter, replica, base "
                              f"wall, base counter, base replica, text], got {_shape(ax)}")
        wall, counter, i, bwall, bcounter, bi, text = ax
        a = _tuple_new(Append, (
            _stamp(wall, counter, i, rids, nrids, f"{what} append {k}"),
            _stamp(bwall, bcounter, bi, rids, nrids, f"{what} append {k} base"),
            _text(text, max_append_text, f"{what} append {k} text"),
        ))
        if a.base < floor:
            raise DecodeError(f"{what} append {k}: made on a base older than the message's "
                              "(not canonical)")
        if previous is not None and not previous < a:
            raise DecodeError(f"{what} append {k}: appends are not in strictly increasing "
                              "(stamp, base, text) order")
        previous = a
        appends.append(a)
    return MessageState(header, base, frozenset(appends), False)


def _shape(x: Any) -> str:
    """A short description of what came instead: its type, and an array's length."""
    if type(x) is list:
        return f"an array of {len(x)}"
    return "nil" if x is None else type(x).__name__
