"""The wire messages and their framing: 4-byte big-endian length, then a msgpack list
[type tag, fields...] (specs/protocol.md §2).

Messages are frozen, slotted, keyword-only values; decoding validates every field, so what a
peer sends either becomes a well-formed message or a RemoteProtocolError with a precise
reason. No I/O, no clock, no session state here.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from .. import codec
from ..errors import DecodeError
from ._auth import MAC_BYTES, valid_key_id
from ._errors import RemoteProtocolError
from ._reconcile import (
    ReconAnswer,
    ReconRanges,
    encode_ranges,
    parse_answer_bits,
    parse_ranges,
    parse_salt,
)

__all__ = ["MAX_FRAME_BYTES", "MAX_REPLICA_ID_BYTES", "MAX_SESSION_CONVERSATIONS",
           "MAX_SESSION_IDS", "MIN_FRAME_BYTES",
           "NONCE_BYTES", "PROTOCOL_VERSION", "Ack", "Auth", "ChunkAck", "CompactDelta", "Delta",
           "Error", "FrameDecoder", "Have", "Hello", "Message", "Ping", "Pong", "StateChunk",
           "StateEnd", "encode_frame", "message_name"]

# 4: the session table (COMPACT_DELTA, §11), HAVE (§12), reconciliation (RECON_RANGES,
# RECON_ANSWER, §13); 5: conversation ids in the session table too (§15)
PROTOCOL_VERSION = 5
MAX_REPLICA_ID_BYTES = 255
#: The smallest max_frame_bytes a replica may set: a conversation's whole state, at the
#: codec's limits on text, must fit in one frame.
MIN_FRAME_BYTES = 64 * 1024
MAX_FRAME_BYTES = 2**32 - 1  # what the 4-byte length prefix can say
_LEAST_FRAME = 1024  # a frame limit a peer may announce: smaller could not carry a DELTA
NONCE_BYTES = 32  # a HELLO's fresh random challenge
_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    version: int
    replica_id: str
    # A fresh random challenge: the peer's AUTH must cover it, so no recorded AUTH verifies.
    nonce: bytes = field(default_factory=lambda: secrets.token_bytes(NONCE_BYTES))
    key_id: str | None = None  # the pre-shared key the dialing side authenticates with
    # The largest frame the sender accepts: its peer sizes DELTAs and STATE_CHUNKs to it, so
    # that replicas with different limits still replicate.
    max_frame_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    mac: bytes  # HMAC-SHA256 of the handshake (specs/security.md)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delta:
    start: int  # exclusive: the entries after this sequence...
    end: int  # ...up to and including this one
    payload: bytes  # codec.encode_map of their join (may be an empty map)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChunk:
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StateEnd:
    seq: int  # the sender's head when the transfer began


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkAck:
    count: int  # STATE_CHUNKs of the current transfer applied so far


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactDelta:
    """A DELTA whose payload's replica ids are in the sender's session table
    (specs/protocol.md §11): `new_ids` extend the table, then `body` is read against it."""

    start: int
    end: int
    new_ids: tuple[str, ...]  # appended to the sender's table, in order
    body: bytes  # codec.encode_map_body: {cid: {tag: field}}, indexes into the table


@dataclass(frozen=True, slots=True, kw_only=True)
class Have:
    """What the sender holds of which origins' logs (specs/protocol.md §12); its replica ids
    are indexes into its session table, which `new_ids` extend first (§11)."""

    filtered: bool  # what the sender sends us is cut to a scope
    new_ids: tuple[str, ...]
    linked: tuple[int, ...]  # flat [index, seq, ...]: linked to the sender, held up to seq
    unlinked: tuple[int, ...]  # indexes of origins no longer linked to the sender


#: Replica ids one side may put in its session table (specs/protocol.md §11): a peer cannot
#: make us hold more, and a sender whose table is full sends plain DELTAs.
MAX_SESSION_IDS = 1024
#: Conversation ids one side may put in its session table (specs/protocol.md §15); once it
#: is full, ids are sent as strings and not added.
MAX_SESSION_CONVERSATIONS = 1024

Message = (Hello | Auth | Delta | Ack | StateChunk | StateEnd | Ping | Pong | Error | ChunkAck
           | CompactDelta | Have | ReconRanges | ReconAnswer)

_MAX_SEQ = codec.MAX_INT
_MAX_ERROR_REASON = 1000  # characters of a peer's ERROR reason kept


# -- field parsers: each takes what msgpack decoded and returns the field's value, or raises
# RemoteProtocolError naming the field, so the peer learns exactly what was wrong.

_Parse = Callable[[Any], Any]


def _seq(what: str) -> _Parse:
    def parse(x: Any) -> int:
        if type(x) is not int or not 0 <= x <= _MAX_SEQ:
            raise RemoteProtocolError(f"{what}: expected a sequence number, got {x!r:.40}")
        return x
    return parse


def _binary(what: str) -> _Parse:
    def parse(x: Any) -> bytes:
        if type(x) is not bytes:
            raise RemoteProtocolError(f"{what}: expected binary, got {type(x).__name__}")
        return x
    return parse


def _version(x: Any) -> int:
    if type(x) is not int:
        raise RemoteProtocolError("HELLO: protocol version is not an integer")
    return x


def _replica_id(x: Any) -> str:
    # A replica id has 1..64 code points (specs/crdt.md); in bytes it must also fit the
    # one-byte length with which a log entry names its origin (specs/storage.md).
    # Printable: the id is logged, and a newline in it could forge log lines.
    if (type(x) is not str or not 1 <= len(x) <= codec.MAX_REPLICA_ID
            or len(x.encode()) > MAX_REPLICA_ID_BYTES or not x.isprintable()):
        raise RemoteProtocolError("HELLO: replica id is not a short printable string")
    return x


def _nonce(x: Any) -> bytes:
    if type(x) is not bytes or len(x) != NONCE_BYTES:
        raise RemoteProtocolError(f"HELLO: nonce is not {NONCE_BYTES} bytes of binary")
    return x


def _key_id(x: Any) -> str | None:
    if x is None or valid_key_id(x):
        return x
    raise RemoteProtocolError("HELLO: key id is not a short printable string")


def _frame_limit(x: Any) -> int:
    if type(x) is not int or not _LEAST_FRAME <= x <= MAX_FRAME_BYTES:
        raise RemoteProtocolError(f"HELLO: frame limit {x!r:.40} is not a number "
                                  f"from {_LEAST_FRAME} to {MAX_FRAME_BYTES}")
    return x


def _mac(x: Any) -> bytes:
    mac: bytes = _binary("AUTH")(x)
    if len(mac) != MAC_BYTES:
        raise RemoteProtocolError("AUTH: not an HMAC-SHA256 (32 bytes)")
    return mac


def _new_ids(what: str) -> _Parse:
    # The codec's rules for a replica id (specs/crdt.md §7), checked here so that a bad one
    # is named as the table's, not as some later payload's.
    def parse(x: Any) -> tuple[str, ...]:
        if type(x) is not list or len(x) > MAX_SESSION_IDS:
            raise RemoteProtocolError(f"{what} new ids: expected an array of at most "
                                      f"{MAX_SESSION_IDS} replica ids")
        for rid in x:
            if type(rid) is not str or not 0 < len(rid) <= codec.MAX_REPLICA_ID or "\x00" in rid:
                raise RemoteProtocolError(f"{what} new ids: a replica id is not a string "
                                          f"of 1..{codec.MAX_REPLICA_ID} characters without NUL")
        return tuple(x)
    return parse


def _flag(what: str) -> _Parse:
    def parse(x: Any) -> bool:
        if type(x) is not bool:
            raise RemoteProtocolError(f"{what}: expected true or false")
        return x
    return parse


def _indexes(what: str, pairs: bool) -> _Parse:
    # Session table indexes (below MAX_SESSION_IDS), each followed by a seq when `pairs`.
    def parse(x: Any) -> tuple[int, ...]:
        if type(x) is not list or len(x) > 2 * MAX_SESSION_IDS or (pairs and len(x) % 2):
            raise RemoteProtocolError(f"{what}: expected a flat array of "
                                      + ("[index, seq] pairs" if pairs else "indexes"))
        for k, v in enumerate(x):
            bound = _MAX_SEQ if pairs and k % 2 else MAX_SESSION_IDS - 1
            if type(v) is not int or not 0 <= v <= bound:
                raise RemoteProtocolError(f"{what}: {v!r:.40} is not "
                                          + ("a sequence number" if bound == _MAX_SEQ
                                             else "a session table index"))
        return tuple(x)
    return parse


def _reason(x: Any) -> str:
    # Never refused: a peer's ERROR is reported whatever it holds, cut to a loggable size.
    return x[:_MAX_ERROR_REASON] if type(x) is str else repr(x)[:_MAX_ERROR_REASON]


# -- checks of a whole message, or of a HELLO before its fields

def _interval(m: Message) -> None:
    assert isinstance(m, (Delta, CompactDelta))
    if m.end <= m.start:
        name = "DELTA" if isinstance(m, Delta) else "COMPACT_DELTA"
        raise RemoteProtocolError(f"{name}: empty or reversed interval ({m.start}, {m.end}]")


def _hello_version_first(args: list[Any]) -> None:
    # The version is read before the rest: a HELLO of another version may have other
    # fields, and its sender deserves to be told the version, not a field count.
    if args and type(args[0]) is int and args[0] != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"protocol version {args[0]} is not supported (this is {PROTOCOL_VERSION})")


@dataclass(frozen=True, slots=True)
class _Row:
    """One message type on the wire: [tag, *fields], each field parsed in order."""

    tag: int
    kind: Callable[..., Message]  # the message class
    name: str  # as specs/protocol.md §2 names it, and as errors name it
    fields: tuple[tuple[str, _Parse], ...]  # (attribute, parser) in wire order
    check: Callable[[Message], None] | None = None  # a rule across fields
    before_fields: Callable[[list[Any]], None] | None = None  # run before the field count
    values: Callable[[Message], tuple[Any, ...]] = field(init=False)

    def __post_init__(self) -> None:
        get = attrgetter(*(attribute for attribute, _ in self.fields))
        single = len(self.fields) == 1
        object.__setattr__(self, "values", (lambda m: (get(m),)) if single else get)


# The wire format of every message (specs/protocol.md §2): adding a message is adding a row.
_ROWS = (
    _Row(1, Hello, "HELLO", (("version", _version), ("replica_id", _replica_id),
                             ("nonce", _nonce), ("key_id", _key_id),
                             ("max_frame_bytes", _frame_limit)),
         before_fields=_hello_version_first),
    _Row(2, Delta, "DELTA", (("start", _seq("DELTA start")), ("end", _seq("DELTA end")),
                             ("payload", _binary("DELTA payload"))), check=_interval),
    _Row(3, Ack, "ACK", (("seq", _seq("ACK")),)),
    _Row(4, StateChunk, "STATE_CHUNK", (("payload", _binary("STATE_CHUNK payload")),)),
    _Row(5, StateEnd, "STATE_END", (("seq", _seq("STATE_END")),)),
    _Row(6, Ping, "PING", (("nonce", _seq("PING nonce")),)),
    _Row(7, Pong, "PONG", (("nonce", _seq("PONG nonce")),)),
    _Row(8, Error, "ERROR", (("reason", _reason),)),
    _Row(9, ChunkAck, "CHUNK_ACK", (("count", _seq("CHUNK_ACK")),)),
    _Row(10, Auth, "AUTH", (("mac", _mac),)),
    # Version 4 (specs/protocol.md §11).
    _Row(11, CompactDelta, "COMPACT_DELTA",
         (("start", _seq("COMPACT_DELTA start")), ("end", _seq("COMPACT_DELTA end")),
          ("new_ids", _new_ids("COMPACT_DELTA")), ("body", _binary("COMPACT_DELTA body"))),
         check=_interval),
    _Row(12, Have, "HAVE", (("filtered", _flag("HAVE filtered")),
                            ("new_ids", _new_ids("HAVE")),
                            ("linked", _indexes("HAVE linked", pairs=True)),
                            ("unlinked", _indexes("HAVE unlinked", pairs=False)))),
    # Reconciliation (specs/protocol.md §13); the frames are _reconcile.py's.
    _Row(16, ReconRanges, "RECON_RANGES", (("salt", parse_salt), ("ranges", parse_ranges))),
    _Row(17, ReconAnswer, "RECON_ANSWER", (("differs", parse_answer_bits),
                                           ("needed", parse_answer_bits))),
)
_BY_TAG = {row.tag: row for row in _ROWS}
_BY_KIND: dict[object, _Row] = {row.kind: row for row in _ROWS}


def message_name(m: Message) -> str:
    """The message's name as specs/protocol.md writes it (DELTA, STATE_CHUNK, ...)."""
    return _BY_KIND[type(m)].name


def encode_frame(m: Message) -> bytes:
    row = _BY_KIND[type(m)]
    if isinstance(m, ReconRanges):  # its ranges go as lists (specs/protocol.md §13)
        body = codec.pack([row.tag, m.salt, encode_ranges(m.ranges)])
        return _LEN.pack(len(body)) + body
    body = codec.pack([row.tag, *row.values(m)])
    return _LEN.pack(len(body)) + body


def _parse_message(body: bytes | memoryview, max_bytes: int) -> Message:
    try:
        obj = codec.unpack_frame(body, max_bytes)
    except DecodeError as e:
        raise RemoteProtocolError(f"malformed frame: {e}") from None
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("malformed frame: expected [type, fields...]")
    tag, args = obj[0], obj[1:]
    row = _BY_TAG.get(tag)
    if row is None:
        raise RemoteProtocolError(f"unknown message type {tag}")
    if row.before_fields is not None:
        row.before_fields(args)
    if len(args) != len(row.fields):
        raise RemoteProtocolError(
            f"message type {tag}: expected {len(row.fields)} fields, got {len(args)}")
    m = row.kind(**{attribute: parse(x)
                    for (attribute, parse), x in zip(row.fields, args, strict=True)})
    if row.check is not None:
        row.check(m)
    return m


class FrameDecoder:
    """Splits a byte stream into messages: 4-byte big-endian length, then msgpack.

    A length over the limit is refused as soon as its 4 bytes arrive, before any of the
    payload is buffered.
    """

    def __init__(self, max_frame_bytes: int):
        self.max_frame_bytes = max_frame_bytes
        self.frames_decoded = 0  # complete frames taken from the buffer so far
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data
        if len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if n > self.max_frame_bytes:
                raise RemoteProtocolError(
                    f"frame of {n} bytes is over the limit of {self.max_frame_bytes}")

    def next_message(self) -> Message | None:
        if len(self._buf) < 4:
            return None
        (n,) = _LEN.unpack_from(self._buf)
        if n > self.max_frame_bytes:
            raise RemoteProtocolError(
                f"frame of {n} bytes is over the limit of {self.max_frame_bytes}")
        if len(self._buf) < 4 + n:
            return None
        # Parsed in place: a copy of the body (two, with a slice of the bytearray) would
        # double what a frame at the size limit holds in memory.
        with memoryview(self._buf) as view, view[4 : 4 + n] as body:
            try:
                return _parse_message(body, self.max_frame_bytes)
            finally:
                body.release()
                view.release()
                del self._buf[: 4 + n]
                self.frames_decoded += 1

    @property
    def buffered(self) -> int:
        return len(self._buf)

