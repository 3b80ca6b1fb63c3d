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

from collections.abc import Callable
from typing import Any

from ..crdt import ConversationMap
from ..errors import DecodeError
from ._encode import encode_field_map
from ._msgpack import map_entries, pack, pack_map_header


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


def rekey_body(body: bytes, resolve: Callable[[Any], str], max_conversations: int) -> bytes:
    """`body` with each top-level key replaced by `resolve(key)` (called in byte order),
    its values copied as they are. DecodeError when the body does not start with a map
    whose entries are all there, when it holds over `max_conversations` (counted from its
    header: the keys are read one at a time, in Python), or when two keys resolve to one
    id; what follows the map (trailing bytes) is kept, for the decoder to refuse."""
    entries, end = map_entries(body, max_conversations)
    seen: set[str] = set()
    parts = [pack_map_header(len(entries))]
    for key, key_start, start, stop in entries:
        cid = resolve(key)
        if cid in seen:
            raise DecodeError(f"conversation {cid!r:.80} twice in one body")
        seen.add(cid)
        # An id sent as a string keeps its bytes; an index becomes the id it stands for.
        parts.append(body[key_start:stop] if cid is key else pack(cid) + body[start:stop])
    parts.append(body[end:])
    return b"".join(parts)
