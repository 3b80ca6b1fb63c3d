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


def _count_headers(data: bytes, pos: int, stop_above: int) -> int:
    """The items of the one msgpack value at data[pos:], as _nested counts them, read from
    the container headers without building any object; stops once past `stop_above`, so it
    takes at most about twice that many steps. The value was already skipped over once, so
    it is well formed."""
    items = 0
    values = 1  # still to read
    while values and items <= stop_above:
        values -= 1
        b = data[pos]
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):  # fixint, nil, bool
            pos += 1
        elif b <= 0x8F:  # fixmap
            n = b & 0x0F
            items, values, pos = items + n, values + 2 * n, pos + 1
        elif b <= 0x9F:  # fixarray
            n = b & 0x0F
            items, values, pos = items + n, values + n, pos + 1
        elif b <= 0xBF:  # fixstr
            pos += 1 + (b & 0x1F)
        elif b in (0xDC, 0xDD, 0xDE, 0xDF):  # array 16/32, map 16/32
            width = 2 if b in (0xDC, 0xDE) else 4
            n = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
            items += n
            values += n if b <= 0xDD else 2 * n
            pos += 1 + width
        else:
            pos += _scalar_size(data, pos, b)
    return items


# The size of each remaining msgpack scalar after its first byte: (length-field width,
# fixed payload size).
_SCALARS = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0),
            0xDB: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1), 0xCA: (0, 4),
            0xCB: (0, 8), 0xCC: (0, 1), 0xCD: (0, 2), 0xCE: (0, 4), 0xCF: (0, 8),
            0xD0: (0, 1), 0xD1: (0, 2), 0xD2: (0, 4), 0xD3: (0, 8), 0xD4: (0, 2),
            0xD5: (0, 3), 0xD6: (0, 5), 0xD7: (0, 9), 0xD8: (0, 17)}


def _scalar_size(data: bytes, pos: int, b: int) -> int:
    width, fixed = _SCALARS[b]  # 0xC1 never gets here: the value was skipped over already
    return 1 + width + fixed + int.from_bytes(data[pos + 1:pos + 1 + width], "big")


def _nested(x: Any) -> int:
    if type(x) is list:
        return len(x) + sum(_nested(y) for y in x if type(y) is list or type(y) is dict)
    if type(x) is dict:
        return len(x) + sum(_nested(y) for y in x.values()
                            if type(y) is list or type(y) is dict)
    return 0
