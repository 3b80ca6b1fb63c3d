"""Conversation maps whose replica ids live in a table kept by a sync session
(specs/protocol.md §11): the body of a COMPACT_DELTA.

A map is `[version, replica_ids, body]` (specs/crdt.md §7). On one connection the same few
replica ids would ride in every DELTA; a session instead keeps the table for the whole
connection, sends each id once (as it is first used), and sends only the `body`, whose
replica indexes refer to that table. The receiver puts the two back together
(`table_prefix(table) + body`) and decodes the result with the ordinary strict decoder, so
a body is held to exactly the rules of a map, and nothing here decodes or validates.
"""

from __future__ import annotations

from ..crdt import ConversationMap
from ._encode import encode_field_map
from ._limits import FORMAT_VERSION
from ._msgpack import pack


def encode_map_body(m: ConversationMap, ids: dict[str, int]) -> bytes:
    """The body `{cid: {tag: field}}` of `m`, its replica indexes into `ids` (replica id ->
    index), which grows, in order of first use, by the ids `m` uses that it lacked."""
    schema = m.schema
    return pack({cid: encode_field_map(fields, ids, schema) for cid, fields in m.convs.items()})


def table_prefix(table: list[str]) -> bytes:
    """The bytes that, followed by a body, make the map `[version, table, body]`."""
    # Packed with a one-byte placeholder (nil) for the body, which is then left off.
    return pack([FORMAT_VERSION, table, None])[:-1]
