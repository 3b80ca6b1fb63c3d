"""msgpack encoding of conversation states and deltas (specs/crdt.md §7); the only package
that imports msgpack, and only in `_msgpack`.

Layout: `[version, [replica ids], {cid: {tag: field}}]`. Replica ids are written once per
message and referred to by index, field names by their small schema tag, so a one-field change
costs about 30 bytes. Decoding is strict: any bytes that are not a valid encoding raise
DecodeError naming what was wrong; no KeyError, TypeError or IndexError escapes, and nothing
decoded can break a lattice invariant (a flag's dots always lie inside its context).

This is the public face; the code lives in private modules, one concern each: `_limits` (the
format version, integer ranges and decoder bounds), `_msgpack` (pack and unpack), `_encode`,
`_decode` (the fast strict decoders) and `_validate` (their slow path, which names what is
wrong), `_history` (the message history: the field of tag 15, and the storage records of one
message and one group choice), `_census` (counting a map's conversations and items before
decoding it), `_received` (maps and conversations kept as the bytes that came, not encoded
again), `_session_table` (a map's body with its replica ids in a sync session's table),
`_conv_keys` (a body whose conversation ids are in the session's table too).
Callers use `codec.<name>` or import from here, never from a private module.
"""

from ..crdt.conversation import trusted_map
from ..crdt.maxmap import MAX_READ_BY_MEMBERS
from ._census import count_conversations, count_items, most_history_records
from ._conv_keys import ConversationKeys, encode_map_body_keyed, rekey_body
from ._decode import decode_fields, decode_map
from ._encode import encode_fields, encode_map
from ._history import decode_choice, decode_message, encode_choice, encode_message
from ._limits import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    MAX_COUNTER,
    MAX_INT,
    MAX_MESSAGE_ID_BYTES,
    MAX_REPLICA_ID,
    STORAGE_LIMITS,
    Limits,
)
from ._msgpack import MAX_FRAME_VALUES, pack, pack_map_header, unpack, unpack_frame
from ._received import (
    MAX_SHARED_TABLE,
    Received,
    decode_map_as_received,
    encode_stored_map,
    store_received,
)
from ._session_table import encode_map_body, table_prefix

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "MAX_COUNTER",
    "MAX_FRAME_VALUES",
    "MAX_INT",
    "MAX_MESSAGE_ID_BYTES",
    "MAX_READ_BY_MEMBERS",  # fixed: part of the read_by lattice's join (crdt/maxmap.py)
    "MAX_REPLICA_ID",
    "MAX_SHARED_TABLE",
    "STORAGE_LIMITS",
    "ConversationKeys",  # a receiver's table of conversation ids (protocol version 5)
    "Limits",
    "Received",
    "count_conversations",  # a peer's frame is refused from these, before decoding
    "count_items",
    "decode_choice",
    "decode_fields",
    "decode_map",
    "decode_map_as_received",
    "decode_message",
    "encode_choice",
    "encode_fields",
    "encode_map",
    "encode_map_body",  # a COMPACT_DELTA's body, ids in the session's table
    "encode_map_body_keyed",  # and conversation ids too (protocol version 5)
    "encode_message",
    "encode_stored_map",
    "most_history_records",  # a reconciled chunk must stay within max_messages
    "pack",
    "pack_map_header",
    "rekey_body",
    "store_received",
    "table_prefix",
    "trusted_map",  # re-exported from crdt.conversation, its home, for the replica
    "unpack",
    "unpack_frame",  # a frame body, its values counted before they are built
]
