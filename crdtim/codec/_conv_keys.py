"""Conversation maps whose conversation ids live in a table kept by a sync session
(specs/protocol.md §15, protocol version 5): a COMPACT_DELTA body's keys.

On one connection the same conversations change again and again, and a conversation id is
often the largest part of a single-field change (13 of a title change's 46 bytes). A
session sends each id once, as a string, which both ends then append to their copy of the
table; afterwards the body's key for that conversation is its index there. Only the keys of
the body's top-level map are rewritten, as bytes: the field maps are copied as they are and
decoded later, by the ordinary strict decoder, exactly as any map's (nothing here decodes
or validates a field).
"""

from __future__ import annotations

from typing import Any

from ..crdt import ConversationMap
from ..errors import DecodeError
from ._encode import encode_field_map
from ._msgpack import UNPACK_ERRORS, map_reader, pack, unpack_failure


def encode_map_body_keyed(m: ConversationMap, ids: dict[str, int], convs: dict[str, int]
                          ) -> tuple[bytes, list[str]]:
    """The body `{key: {tag: field}}` of `m`, replica indexes into `ids` (which grows as
    encode_map_body's does), each key the conversation's index in `convs` (conversation id ->
    index) or, for one that `convs` lacks, the id itself; and those ids, in body order."""
    schema = m.schema
    body: dict[Any, Any] = {}
    new: list[str] = []
    for cid, fields in m.convs.items():
        i = convs.get(cid)
        if i is None:
            new.append(cid)
            body[cid] = encode_field_map(fields, ids, schema)
        else:
            body[i] = encode_field_map(fields, ids, schema)
    return pack(body), new


class ConversationKeys:
    """A receiver's copy of the peer's table of conversation ids (specs/protocol.md §15):
    index -> id, and each id's bytes as it came (what an index key is rewritten to), at
    most `capacity` of them. Grown only by rekey_body."""

    __slots__ = ("capacity", "held", "ids", "packed")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.ids: list[str] = []
        self.packed: list[bytes] = []  # ids[i] as msgpack
        self.held: set[str] = set()

    def __len__(self) -> int:
        return len(self.ids)


# The bytes an integer key takes, by its first byte, past the positive fixints (a peer may
# send a small index in any integer encoding: msgpack does not require the shortest).
_INT_KEY_BYTES = {0xcc: 2, 0xcd: 3, 0xce: 5, 0xcf: 9, 0xd0: 2, 0xd1: 3, 0xd2: 5, 0xd3: 9}


def rekey_body(body: bytes, keys: ConversationKeys, max_conversations: int,
               prefix: bytes = b"") -> bytes:
    """`prefix` + `body` with each top-level key replaced by the conversation id it stands
    for in `keys` (specs/protocol.md §15), which grows by the ids sent as strings while it has
    room; the values, and whatever follows the map (for the decoder to refuse), copied as
    they are. DecodeError naming the first thing wrong, in byte order: not a map, over
    `max_conversations` entries (from its header, before any is read), a key that is a
    container (from its header, before it is built), an index not in the table, a key of
    another type, an id sent as a string that the table holds, one id twice, or the bytes
    ending before the last value starts. The last value is not read (nothing after it needs
    finding): one cut short is refused by the decoder, as any malformed value. Ids a refused
    body appended before the refusal stay in `keys`: a refusal closes the connection (§15).

    Speed (the receive path of every COMPACT_DELTA): a body of one conversation keyed by an
    index in the table (a positive fixint, uint 8 or uint 16: any index of a table of at most
    65,536), the common live change, is rewritten with no msgpack call at all;
    otherwise the entries are read with three calls into msgpack each (key, skip the value,
    where it ends), the table looked up inline. An index key becomes the id's bytes kept
    from when it came: nothing is packed.
    """
    if body[:1] == b"\x81" and len(body) > 4:
        head = body[1]
        if head < 0x80:  # a positive fixint is its own value
            index, start = head, 2
        elif head == 0xcc:  # uint 8
            index, start = body[2], 3
        elif head == 0xcd:  # uint 16
            index, start = body[2] << 8 | body[3], 4
        else:
            index = start = -1
        if 0 <= index < len(keys.ids):
            return b"".join((prefix, b"\x81", keys.packed[index], body[start:]))
    return _rekey_entries(body, keys, max_conversations, prefix)


def _rekey_entries(body: bytes, keys: ConversationKeys, max_conversations: int,
                   prefix: bytes) -> bytes:
    """rekey_body, entry by entry."""
    n, pos, unpacker = map_reader(body, max_conversations)
    unpack, skip, tell = unpacker.unpack, unpacker.skip, unpacker.tell
    ids, packed, held = keys.ids, keys.packed, keys.held
    parts = [prefix, body[:pos]]
    # The indexes used, and the ids sent as strings that the table had no room for: an
    # index stands for one id, and an id the table holds cannot come as a string.
    seen: set[int | str] = set()
    end = len(body)
    last = n - 1
    try:
        for k in range(n):
            head = body[pos]
            if head < len(ids) and head < 0x80:  # a fixint index in the table: most keys
                skip()
                index: int | str = head
                start = pos + 1
                parts.append(packed[head])
            else:
                if 0x80 <= head <= 0x9f or 0xdc <= head <= 0xdf:  # fixmap, fixarray, 16/32
                    raise DecodeError("a map key is an array or a map")
                key = unpack()
                if type(key) is int:
                    if not 0 <= key < len(ids):
                        raise DecodeError(f"conversation index {key} is not in the session "
                                          f"table ({len(ids)} conversations)")
                    index = key
                    start = pos + _INT_KEY_BYTES[head]
                    parts.append(packed[key])
                elif type(key) is str:
                    if key in held:
                        raise DecodeError(f"conversation id {key!r:.80} is already in the "
                                          "session table")
                    start = tell()
                    index = key
                    if len(ids) < keys.capacity:
                        index = len(ids)
                        ids.append(key)
                        packed.append(body[pos:start])
                        held.add(key)
                    parts.append(body[pos:start])  # an id sent as a string keeps its bytes
                else:
                    raise DecodeError(f"a conversation key must be an id or an index, got "
                                      f"{type(key).__name__}")
            if index in seen:
                cid = index if isinstance(index, str) else ids[index]
                raise DecodeError(f"conversation {cid!r:.80} twice in one body")
            seen.add(index)
            if k == last:
                if start >= end:
                    raise IndexError  # no value at all after the last key
                pos = end
            else:
                skip()
                pos = tell()
            parts.append(body[start:pos])
    except DecodeError:
        raise
    except UNPACK_ERRORS as e:
        raise unpack_failure(e) from None
    parts.append(body[pos:])
    return b"".join(parts)
