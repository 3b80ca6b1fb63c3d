"""Bytes kept as they came (specs/crdt.md §7, the writers that copy field maps; specs/storage.md,
`convs`): a peer's STATE_CHUNK decoded with the parts the decoder checked kept
(`decode_map_as_received`, `Received`), a conversation of it stored as received
(`store_received`), and a STATE_CHUNK made from stored values with their field maps copied
(`encode_stored_map`).

These paths skip re-encoding, never validation: a copied field map is one that a decoder
accepted against exactly the replica table it is written with, or it goes through the
decoder and encoder again; and whatever is sent is checked by its receiver like any map.
"""

from __future__ import annotations

from typing import Any

from ..crdt import DEFAULT_SCHEMA, ConversationMap, Schema
from ..errors import DecodeError
from ._decode import decode_field_map, decode_map_parts, header_or_none
from ._encode import encode_field_map
from ._limits import DEFAULT_LIMITS, FORMAT_VERSION, STORAGE_LIMITS, Limits
from ._msgpack import pack, unpack
from ._validate import dec_header


class Received:
    """A map as it came: the bytes, and the replica table and per-conversation field maps
    that the decoder checked, so that a receiver can store or log them without encoding the
    decoded states again (store_received, and a log entry of `payload` itself)."""

    __slots__ = ("body", "payload", "rids")

    def __init__(self, payload: bytes, rids: list[str], body: dict[str, Any]):
        self.payload = payload
        self.rids = rids
        self.body = body


#: A received conversation is stored with the message's whole replica table (in place of a
#: table of just the ids it uses) only when that table is this short: the bytes it saves
#: encoding cost at most this many unused ids in the stored value.
MAX_SHARED_TABLE = 4


def store_received(received: Received, cid: str) -> bytes | None:
    """Stored bytes (as encode_fields would make, but for the replica table) of conversation
    `cid` of a map decode_map_as_received accepted; None when its table is too long to share,
    or when the conversation holds a message history (encode the decoded fields instead: the
    store keeps messages in records of their own, specs/crdt.md §8.6).

    Safe because the decoder accepted exactly this field map against exactly this table:
    decoding the result gives the same fields (bottom fields in it are dropped on every
    read, as they were on receipt), and stored values are read with limits at least as wide
    as a peer's.
    """
    if len(received.rids) > MAX_SHARED_TABLE:
        return None
    body = received.body[cid]
    for value in body.values():
        if type(value) is list and len(value) == 2:  # a message history's shape, whatever its tag
            return None
    return pack([FORMAT_VERSION, received.rids, body])


def decode_map_as_received(
    data: bytes, schema: Schema = DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS
) -> tuple[ConversationMap, Received]:
    """decode_map, and the checked parts of the message (Received)."""
    m, rids, body = decode_map_parts(data, schema, limits)
    return m, Received(data, rids, body)


def encode_stored_map(stored: list[tuple[str, bytes]], schema: Schema = DEFAULT_SCHEMA) -> bytes:
    """encode_map of the conversations whose stored values (encode_fields or store_received
    bytes) are given, in order: the bytes a replica sends of its state.

    A stored value whose replica table is a prefix of the message's table so far (or extends
    it with new ids) has its field map copied as it is, with no decoding; any other is
    decoded and encoded against the message's table. The receiver checks everything, as it
    does every map (a damaged value copied as it is is refused there). DecodeError, naming
    the conversation, for a stored value that is not even shaped like one.
    """
    table: list[str] = []
    ids: dict[str, int] = {}
    body: dict[str, Any] = {}
    for cid, raw in stored:
        try:
            obj = unpack(raw, STORAGE_LIMITS.max_bytes)
        except DecodeError as e:
            raise DecodeError(f"stored conversation {cid!r}: {e}") from None
        if type(obj) is list and len(obj) == 3 and obj[0] == FORMAT_VERSION \
                and type(obj[0]) is int and type(obj[1]) is list and type(obj[2]) is dict:
            rids, x = obj[1], obj[2]
            n = len(rids)
            if n <= len(table):
                if rids == table[:n]:
                    body[cid] = x
                    continue
            elif rids[:len(table)] == table and _new_ids(rids[len(table):], ids):
                for rid in rids[len(table):]:
                    ids[rid] = len(table)
                    table.append(rid)
                body[cid] = x
                continue
        # Another table order (or a damaged value): through the decoder, which names the fault.
        header = header_or_none(obj, STORAGE_LIMITS)
        if header is None:
            header = dec_header(obj, STORAGE_LIMITS, f"stored conversation {cid!r}")
        fields = decode_field_map(header[1], header[0], schema, STORAGE_LIMITS, cid)
        body[cid] = encode_field_map(fields, ids, schema)
        table.extend(list(ids)[len(table):])
    return pack([FORMAT_VERSION, table, body])


def _new_ids(rids: list[Any], ids: dict[str, int]) -> bool:
    """True if `rids` are distinct strings none of which is in `ids`."""
    return (all(type(r) is str for r in rids) and len(set(rids)) == len(rids)
            and not any(r in ids for r in rids))
