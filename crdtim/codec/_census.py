"""Counting what a conversation map would decode to, before decoding it (specs/security.md
§7, "decoded work per frame"): how many conversations, and how many items.

Decoding builds Python objects at up to about 50 bytes of memory per byte of payload for the
tiniest values (a 13-byte conversation, a 2-byte dot), so a peer's frame must be refused from
its counts, not after it was decoded. The counts are read with a streaming unpacker: the
conversation count from the map's header alone; the items one field value at a time, so that
counting never holds more than one field's objects. Never raises: malformed data gives None,
and the decoder then says what is wrong.
"""

from __future__ import annotations

from typing import Any

from ._msgpack import count_headers as _count_headers
from ._msgpack import stream as _unpacker
from ._msgpack import unpack as _unpack


def _body(unpacker: Any) -> int:
    """Read `[version, [replica ids], {` and return the number of conversations."""
    if unpacker.read_array_header() != 3:
        raise ValueError("not a conversation map")
    unpacker.skip()  # the format version
    unpacker.skip()  # the replica table, bounded by its own limit when decoded
    return int(unpacker.read_map_header())


def count_conversations(data: bytes) -> int | None:
    """The number of conversations in an encoded conversation map, from its header only;
    None when `data` does not start like one."""
    try:
        return _body(_unpacker(data))
    except Exception:  # any malformation: the decoder names it
        return None


def count_items(data: bytes, stop_above: int) -> int | None:
    """The items of an encoded conversation map: each conversation, each field, and each
    value inside a field's arrays and maps (a dot is two: its replica and counter). Every
    item takes at least one byte, so a map of n bytes has at most n items. Counting stops
    once past `stop_above`; None when `data` is not a conversation map."""
    try:
        unpacker = _unpacker(data)
        items = 0
        for _ in range(_body(unpacker)):
            unpacker.skip()  # the conversation id
            nfields = int(unpacker.read_map_header())
            items += 1 + nfields
            for _ in range(nfields):
                unpacker.skip()  # the field's tag
                start = unpacker.tell()
                unpacker.skip()  # the value, read without building it, for its size
                end = unpacker.tell()
                if end - start <= stop_above - items:
                    # An item takes at least a byte, so this value builds few enough objects.
                    items += _nested(_unpack(data[start:end]))
                else:  # it could be over on its own: count it from its headers alone
                    items += _count_headers(data, start, stop_above - items)
                if items > stop_above:
                    return items
        return items
    except Exception:  # any malformation: the decoder names it
        return None


def _nested(x: Any) -> int:
    if type(x) is list:
        return len(x) + sum(_nested(y) for y in x if type(y) is list or type(y) is dict)
    if type(x) is dict:
        return len(x) + sum(_nested(y) for y in x.values()
                            if type(y) is list or type(y) is dict)
    return 0


def most_history_records(data: bytes) -> int | None:
    """The most message and choice records any one message history of an encoded
    conversation map holds (0 when it holds none), read from the maps' headers: what a
    receiver's `max_messages` is checked against (specs/crdt.md §7, "Messages"). Every field
    value that is a 2-array is a history (the other encodings are an integer, a map and
    arrays of 3 and 4, specs/crdt.md §7 "Fields of other schemas"). None when `data` is not
    a conversation map."""
    try:
        unpacker = _unpacker(data)
        most = 0
        for _ in range(_body(unpacker)):
            unpacker.skip()  # the conversation id
            for _ in range(int(unpacker.read_map_header())):
                unpacker.skip()  # the field's tag
                start = unpacker.tell()
                unpacker.skip()
                if data[start] != 0x92:  # a fixarray of 2: [messages, choices]
                    continue
                history = _unpacker(data[start:unpacker.tell()])
                history.read_array_header()
                messages = int(history.read_map_header())
                for _ in range(2 * messages):
                    history.skip()
                most = max(most, messages + int(history.read_map_header()))
        return most
    except Exception:  # any malformation: the decoder names it
        return None
