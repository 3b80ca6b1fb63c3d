"""The wire messages and their framing: 4-byte big-endian length, then a msgpack list
[type tag, fields...] (specs/protocol.md §2).

Messages are frozen, slotted, keyword-only values; decoding validates every field, so what a
peer sends either becomes a well-formed message or a RemoteProtocolError with a precise
reason. No I/O, no clock, no session state here.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any, Union

from .. import codec
from ..errors import DecodeError
from ._auth import valid_key_id
from ._errors import RemoteProtocolError

__all__ = ["MAX_FRAME_BYTES", "MAX_REPLICA_ID_BYTES", "MIN_FRAME_BYTES", "NONCE_BYTES",
           "PROTOCOL_VERSION", "Ack", "Auth", "ChunkAck", "Delta", "Error", "FrameDecoder",
           "Hello", "Message", "Ping", "Pong", "StateChunk", "StateEnd", "encode_frame"]

PROTOCOL_VERSION = 2
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


Message = Union[Hello, Auth, Delta, Ack, StateChunk, StateEnd, Ping, Pong, Error, ChunkAck]

_TAGS: dict[type, int] = {Hello: 1, Delta: 2, Ack: 3, StateChunk: 4, StateEnd: 5, Ping: 6, Pong: 7,
                          Error: 8, ChunkAck: 9, Auth: 10}
_ARITY = {1: 5, 2: 3, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 1, 10: 1}
_MAX_SEQ = codec.MAX_INT

def _message_fields(m: Message) -> list[Any]:
    if isinstance(m, Hello):
        return [m.version, m.replica_id, m.nonce, m.key_id, m.max_frame_bytes]
    if isinstance(m, Auth):
        return [m.mac]
    if isinstance(m, Delta):
        return [m.start, m.end, m.payload]
    if isinstance(m, (Ack, StateEnd)):
        return [m.seq]
    if isinstance(m, ChunkAck):
        return [m.count]
    if isinstance(m, StateChunk):
        return [m.payload]
    if isinstance(m, (Ping, Pong)):
        return [m.nonce]
    return [m.reason]


def encode_frame(m: Message) -> bytes:
    body = codec.pack([_TAGS[type(m)], *_message_fields(m)])
    return _LEN.pack(len(body)) + body


def _seq(x: Any, what: str) -> int:
    if type(x) is not int or not 0 <= x <= _MAX_SEQ:
        raise RemoteProtocolError(f"{what}: expected a sequence number, got {x!r:.40}")
    return x


def _bytes(x: Any, what: str) -> bytes:
    if type(x) is not bytes:
        raise RemoteProtocolError(f"{what}: expected binary, got {type(x).__name__}")
    return x


def _parse_message(body: bytes, max_bytes: int) -> Message:
    try:
        obj = codec.unpack(body, max_bytes)
    except DecodeError as e:
        raise RemoteProtocolError(f"malformed frame: {e}") from None
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("malformed frame: expected [type, fields...]")
    tag, args = obj[0], obj[1:]
    arity = _ARITY.get(tag)
    if arity is None:
        raise RemoteProtocolError(f"unknown message type {tag}")
    if tag == 1 and args and type(args[0]) is int and args[0] != PROTOCOL_VERSION:
        # The version is read before the rest: a HELLO of another version may have other
        # fields, and its sender deserves to be told the version, not a field count.
        raise RemoteProtocolError(
            f"protocol version {args[0]} is not supported (this is {PROTOCOL_VERSION})")
    if len(args) != arity:
        raise RemoteProtocolError(f"message type {tag}: expected {arity} fields, got {len(args)}")
    if tag == 1:
        version, rid, nonce, key_id, max_frame = args
        if type(version) is not int:
            raise RemoteProtocolError("HELLO: protocol version is not an integer")
        # A replica id has 1..64 code points (specs/crdt.md); in bytes it must also fit the
        # one-byte length with which a log entry names its origin (specs/storage.md).
        # Printable: the id is logged, and a newline in it could forge log lines.
        if (type(rid) is not str or not 1 <= len(rid) <= codec.MAX_REPLICA_ID
                or len(rid.encode()) > MAX_REPLICA_ID_BYTES or not rid.isprintable()):
            raise RemoteProtocolError("HELLO: replica id is not a short printable string")
        if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
            raise RemoteProtocolError(f"HELLO: nonce is not {NONCE_BYTES} bytes of binary")
        if key_id is not None and not valid_key_id(key_id):
            raise RemoteProtocolError("HELLO: key id is not a short printable string")
        if type(max_frame) is not int or not _LEAST_FRAME <= max_frame <= MAX_FRAME_BYTES:
            raise RemoteProtocolError(f"HELLO: frame limit {max_frame!r:.40} is not a number "
                                      f"from {_LEAST_FRAME} to {MAX_FRAME_BYTES}")
        return Hello(version=version, replica_id=rid, nonce=nonce, key_id=key_id,
                     max_frame_bytes=max_frame)
    if tag == 10:
        mac = _bytes(args[0], "AUTH")
        if len(mac) != hashlib.sha256().digest_size:
            raise RemoteProtocolError("AUTH: not an HMAC-SHA256 (32 bytes)")
        return Auth(mac=mac)
    if tag == 2:
        start, end = _seq(args[0], "DELTA start"), _seq(args[1], "DELTA end")
        if end <= start:
            raise RemoteProtocolError(f"DELTA: empty or reversed interval ({start}, {end}]")
        return Delta(start=start, end=end, payload=_bytes(args[2], "DELTA payload"))
    if tag == 3:
        return Ack(seq=_seq(args[0], "ACK"))
    if tag == 4:
        return StateChunk(payload=_bytes(args[0], "STATE_CHUNK payload"))
    if tag == 5:
        return StateEnd(seq=_seq(args[0], "STATE_END"))
    if tag == 9:
        return ChunkAck(count=_seq(args[0], "CHUNK_ACK"))
    if tag in (6, 7):
        nonce = _seq(args[0], "PING/PONG nonce")
        return Ping(nonce=nonce) if tag == 6 else Pong(nonce=nonce)
    reason = args[0]
    return Error(reason=reason[:1000] if type(reason) is str else repr(reason)[:1000])


class FrameDecoder:
    """Splits a byte stream into messages: 4-byte big-endian length, then msgpack.

    A length over the limit is refused as soon as its 4 bytes arrive, before any of the
    payload is buffered.
    """

    def __init__(self, max_frame_bytes: int):
        self.max_frame_bytes = max_frame_bytes
        self.frames_decoded = 0  # complete frames taken from the buffer so far
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
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
            raise RemoteProtocolError(f"frame of {n} bytes is over the limit of {self.max_frame_bytes}")
        if len(self._buf) < 4 + n:
            return None
        body = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        self.frames_decoded += 1
        return _parse_message(body, self.max_frame_bytes)

    @property
    def buffered(self) -> int:
        return len(self._buf)

