"""The sync session: delta-state anti-entropy between two replicas, sans-IO.

Modelled on h11: a `SyncSession` is fed the bytes that arrived (`receive_data`) and returns
what happened as events; what it wants sent accumulates and is taken with `data_to_send()`.
It never touches a socket, a clock or trio, and reaches the replica only through the narrow
`ReplicaPort` interface, so a test can drive two sessions with no network at all, `net.py`
drives them over trio TCP streams, and an embedding app over its own WebSocket.

Algorithm (Almeida, Shoker, Baquero, "Delta State Replicated Data Types", 2018, Algorithm 2,
with Enes et al., ICDE 2019, "avoiding back-propagation" and "removing redundant state"):
each side streams DELTA(from, to, join of its log entries in (from, to] that did not come from
the peer); the receiver applies one delta in one transaction -- which logs only the novel part,
with the peer as origin, and records that it now holds the peer's log up to `to` -- and
answers ACK(to). A side's first ACK is its resume point: the sender starts streaming after it,
or, if entries after it were already dropped from the log, sends its whole state in chunks
(each chunk a delta) and then STATE_END(head it started from). Wire format and states:
specs/protocol.md.

State table (one per session; each direction's sub-state is noted beside it):

    AWAIT_HELLO --HELLO ok--> OPEN --ERROR / bad input / close()--> CLOSED
    AWAIT_HELLO --anything else--> CLOSED (error)
    OPEN: outbound  WAIT_RESUME --first ACK--> DELTAS | STATE_TRANSFER --STATE_END sent--> DELTAS
                    DELTAS --entries not yet sent were trimmed, nothing in flight--> STATE_TRANSFER
          inbound   DELTAS --STATE_CHUNK--> STATE --STATE_END--> DELTAS
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from . import codec
from .crdt import ConversationMap, Schema
from .errors import ClockDriftError, CrdtimError, DecodeError, LogTrimmedError

__all__ = [
    "PROTOCOL_VERSION",
    "SessionConfig",
    "SyncSession",
    "ReplicaPort",
    "State",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Hello", "Delta", "Ack", "StateChunk", "StateEnd", "ChunkAck", "Ping", "Pong", "Error",
    "HandshakeComplete", "DeltaApplied", "PeerAcked", "StateTransferStarted",
    "StateTransferFinished", "PongReceived", "PeerClosed",
    "encode_frame", "FrameDecoder",
]

PROTOCOL_VERSION = 1
MAX_REPLICA_ID_BYTES = 255
_LEN = struct.Struct(">I")
_DELTA_OVERHEAD = 64  # frame header and DELTA fields around the payload, generously
_MAX_DELTA_GROUP = 64  # DELTAs that arrived together, applied in one transaction


# -- errors ------------------------------------------------------------------------------------


class ProtocolError(CrdtimError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol or sent bad data. The session has queued an ERROR frame
    with the reason (take it with data_to_send() and send it before closing) and applied
    nothing from the offending frame."""


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    """Every limit of a session, with its named default."""

    max_frame_bytes: int = 8 * 1024 * 1024  # refused from the length prefix, before buffering
    max_entries_per_delta: int = 256  # log entries joined into one DELTA
    max_conversations_per_chunk: int = 512  # conversations in one STATE_CHUNK
    # Encoded log entries (or stored conversations) joined into one DELTA (or STATE_CHUNK):
    # keeps every frame far below max_frame_bytes. A single log entry too large for a frame
    # (a huge batch) is sent as a state transfer instead, which is chunked.
    max_delta_bytes: int = 1024 * 1024
    max_unacked_frames: int = 8  # DELTA/STATE_CHUNK frames in flight: back-pressure
    ping_interval: float = 5.0  # seconds of our silence before we PING
    idle_timeout: float = 20.0  # seconds of peer silence before the link is declared dead
    handshake_timeout: float = 10.0  # seconds from initiate() for the peer's HELLO to arrive
    # Bytes we may have queued for a peer that does not read them (its PINGs' PONGs, say)
    # before the owner must stop reading from it until they are sent.
    max_output_backlog: int = 1024 * 1024
    limits: codec.Limits = field(default_factory=lambda: codec.DEFAULT_LIMITS)


# -- the replica, as the session sees it ----------------------------------------------------------


class ReplicaPort(Protocol):
    """What a session needs of a replica (crdtim.Replica provides it)."""

    id: str
    schema: Schema

    @property
    def head(self) -> int: ...
    @property
    def log_floor(self) -> int: ...
    def delta_interval(self, after: int, *, skip_origin: str | None = None,
                       max_entries: int = ...) -> tuple[int, ConversationMap | None]:
        """Raises LogTrimmedError when entries after `after` are gone."""
    def state_chunk(self, after: str | None, max_conversations: int = ...
                    ) -> tuple[ConversationMap, str | None]: ...
    def apply_map(self, delta: ConversationMap, origin: str | None = None, *,
                  received: tuple[str, int] | None = None) -> set[str]: ...
    def record_ack(self, peer: str, seq: int) -> None: ...
    def received_from(self, peer: str) -> int: ...


# -- wire messages: [type tag, fields...] ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    version: int
    replica_id: str
    auth: Any = None  # reserved for authentication (specs/protocol.md)


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


Message = Union[Hello, Delta, Ack, StateChunk, StateEnd, Ping, Pong, Error, ChunkAck]

_TAGS: dict[type, int] = {Hello: 1, Delta: 2, Ack: 3, StateChunk: 4, StateEnd: 5, Ping: 6, Pong: 7,
                          Error: 8, ChunkAck: 9}
_MAX_SEQ = codec.MAX_INT


def _message_fields(m: Message) -> list[Any]:
    if isinstance(m, Hello):
        return [m.version, m.replica_id, m.auth]
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
    arity = {1: 3, 2: 3, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 1}.get(tag)
    if arity is None:
        raise RemoteProtocolError(f"unknown message type {tag}")
    if len(args) != arity:
        raise RemoteProtocolError(f"message type {tag}: expected {arity} fields, got {len(args)}")
    if tag == 1:
        version, rid, auth = args
        if type(version) is not int:
            raise RemoteProtocolError("HELLO: protocol version is not an integer")
        # A replica id has 1..64 code points (specs/crdt.md); in bytes it must also fit the
        # one-byte length with which a log entry names its origin (specs/storage.md).
        if (type(rid) is not str or not 1 <= len(rid) <= codec.MAX_REPLICA_ID
                or len(rid.encode()) > MAX_REPLICA_ID_BYTES):
            raise RemoteProtocolError("HELLO: replica id is not a short string")
        return Hello(version=version, replica_id=rid, auth=auth)
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
        return _parse_message(body, self.max_frame_bytes)

    @property
    def buffered(self) -> int:
        return len(self._buf)


# -- events the session reports ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeComplete:
    peer_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaApplied:
    start: int
    end: int
    changed: frozenset[str]  # conversation ids whose state changed here
    nbytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAcked:
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StateTransferStarted:
    outbound: bool  # True: we are sending our state to the peer


@dataclass(frozen=True, slots=True, kw_only=True)
class StateTransferFinished:
    outbound: bool
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PongReceived:
    rtt: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerClosed:
    reason: str  # the peer's ERROR reason


Event = Union[HandshakeComplete, DeltaApplied, PeerAcked, StateTransferStarted,
              StateTransferFinished, PongReceived, PeerClosed]


# -- the session --------------------------------------------------------------------------------------


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    OPEN = "open"
    CLOSED = "closed"


class _Out(enum.Enum):
    WAIT_RESUME = "wait_resume"
    DELTAS = "deltas"
    STATE_TRANSFER = "state_transfer"


class _In(enum.Enum):
    DELTAS = "deltas"
    STATE = "state"


# Which messages each session state accepts; anything else is a protocol error.
_ACCEPTS: dict[State, tuple[type, ...]] = {
    State.AWAIT_HELLO: (Hello, Error),
    State.OPEN: (Delta, Ack, StateChunk, StateEnd, Ping, Pong, Error, ChunkAck),
    State.CLOSED: (),
}


class SyncSession:
    """One side of one connection to one peer. Not thread-safe; no I/O.

    Usage: create, `initiate(now)`, send `data_to_send()`; for every chunk of bytes that
    arrives, `receive_data(data, now)` -> events; after every batch of local writes and every
    event, call `pump()` and send `data_to_send()`; call `tick(now)` now and then (for
    heartbeats and the idle timeout). On RemoteProtocolError send `data_to_send()` (it holds
    the ERROR frame) and close the connection.
    """

    def __init__(self, replica: ReplicaPort, config: SessionConfig | None = None,
                 auth: Any = None):
        self.replica = replica
        self.config = config or SessionConfig()
        self.state = State.AWAIT_HELLO
        self.peer_id: str | None = None
        self._auth = auth
        self._decoder = FrameDecoder(self.config.max_frame_bytes)
        self._outgoing = bytearray()
        self._out = _Out.WAIT_RESUME
        self._in = _In.DELTAS
        self._sent_upto = 0  # our log is streamed up to here
        self._acked = 0  # ...and the peer acknowledged up to here
        self._inflight: list[int] = []  # `end` of each DELTA/STATE_END not yet acknowledged
        self._chunks_sent = 0  # outbound transfer: STATE_CHUNKs sent...
        self._chunks_acked = 0  # ...and acknowledged
        self._chunks_received = 0  # inbound transfer: STATE_CHUNKs applied
        self._transfer_after: str | None = None
        self._transfer_head = 0
        self._expect_from = 0  # inbound: the next DELTA must start here
        self._pending_events: list[Event] = []  # happened in pump(); reported by receive_data
        self._last_sent = 0.0
        self._last_received = 0.0
        self._started = 0.0
        self._ping: tuple[int, float] | None = None
        self._nonce = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- outgoing bytes ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def _send(self, m: Message) -> int:
        frame = encode_frame(m)
        self._outgoing += frame
        self.bytes_sent += len(frame)
        return len(frame)

    # -- lifecycle -----------------------------------------------------------------------------

    def initiate(self, now: float = 0.0) -> None:
        """Queue our HELLO; both sides call this (the protocol is symmetric)."""
        if self.state is not State.AWAIT_HELLO:
            raise LocalProtocolError("initiate() after the handshake")
        self._last_sent = self._last_received = self._started = now
        self._send(Hello(version=PROTOCOL_VERSION, replica_id=self.replica.id, auth=self._auth))

    def close(self, reason: str) -> None:
        """Queue an ERROR frame telling the peer why we close (no-op once closed)."""
        if self.state is not State.CLOSED:
            self._send(Error(reason=reason))
            self.state = State.CLOSED

    def _fail(self, reason: str) -> RemoteProtocolError:
        self.close(reason)
        return RemoteProtocolError(reason)

    # -- incoming bytes ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Process bytes from the peer; returns what happened, in order.

        Raises RemoteProtocolError (after queueing an ERROR frame) for anything the peer
        should not have sent; nothing of the offending frame is applied.
        """
        if self.state is State.CLOSED:
            return []
        self._last_received = now
        self.bytes_received += len(data)
        events, self._pending_events = self._pending_events, []
        try:
            self._decoder.feed(data)
            lookahead: Message | None = None
            while self.state is not State.CLOSED:
                m, lookahead = lookahead or self._decoder.next_message(), None
                if m is None:
                    break
                if not (isinstance(m, Delta) and self.state is State.OPEN):
                    events.extend(self._handle(m, now))
                    continue
                # Group commit: DELTAs that arrived together are applied in one transaction
                # (one fsync) and answered with one ACK, so a burst does not cost a commit
                # per frame. A bad frame in the burst ends it: those before it still count.
                group, bad = [m], None
                while len(group) < _MAX_DELTA_GROUP:
                    try:
                        nxt = self._decoder.next_message()
                    except RemoteProtocolError as e:
                        bad = e
                        break
                    if not isinstance(nxt, Delta):
                        lookahead = nxt
                        break
                    group.append(nxt)
                events.extend(self._on_deltas(group))
                if bad is not None:
                    raise bad
        except RemoteProtocolError as e:
            if self.state is not State.CLOSED:
                self.close(e.reason)
            raise
        return events

    def _handle(self, m: Message, now: float) -> list[Event]:
        if not isinstance(m, _ACCEPTS[self.state]):
            raise self._fail(f"unexpected {type(m).__name__.upper()} in state {self.state.value}")
        if isinstance(m, Error):
            self.state = State.CLOSED
            return [PeerClosed(reason=m.reason)]
        if isinstance(m, Hello):
            return self._on_hello(m)
        if isinstance(m, Delta):
            return self._on_deltas([m])
        if isinstance(m, Ack):
            return self._on_ack(m.seq)
        if isinstance(m, ChunkAck):
            if not self._chunks_acked < m.count <= self._chunks_sent:
                raise self._fail(f"CHUNK_ACK {m.count} for {self._chunks_sent} chunks sent")
            self._chunks_acked = m.count
            return []
        if isinstance(m, StateChunk):
            return self._on_state_chunk(m)
        if isinstance(m, StateEnd):
            return self._on_state_end(m.seq)
        if isinstance(m, Ping):
            self._send(Pong(nonce=m.nonce))
            return []
        assert isinstance(m, Pong)
        if self._ping is not None and self._ping[0] == m.nonce:
            rtt = now - self._ping[1]
            self._ping = None
            return [PongReceived(rtt=rtt)]
        return []

    def _on_hello(self, m: Hello) -> list[Event]:
        if m.version != PROTOCOL_VERSION:
            raise self._fail(f"protocol version {m.version} is not supported (this is {PROTOCOL_VERSION})")
        if m.replica_id == self.replica.id:
            raise self._fail(f"connected to itself (replica {m.replica_id})")
        self.peer_id = m.replica_id
        self.state = State.OPEN
        # Our first ACK tells the peer where to resume streaming its log to us.
        self._expect_from = self.replica.received_from(m.replica_id)
        self._send(Ack(seq=self._expect_from))
        return [HandshakeComplete(peer_id=m.replica_id)]

    def _decode(self, payload: bytes, what: str) -> ConversationMap:
        try:
            return codec.decode_map(payload, self.replica.schema, self.config.limits)
        except DecodeError as e:
            raise self._fail(f"{what}: {e}") from None

    def _apply(self, delta: ConversationMap, received: tuple[str, int] | None) -> set[str]:
        try:
            return self.replica.apply_map(delta, self.peer_id, received=received)
        except (ClockDriftError, DecodeError) as e:  # DecodeError: e.g. an unstorable id
            raise self._fail(f"refused: {e}") from None

    def _on_deltas(self, group: list[Delta]) -> list[Event]:
        """Apply consecutive DELTAs as one: their join, in one transaction, one ACK.

        The intervals must chain from the resume point; the first that does not, or whose
        payload is invalid, is refused after the ones before it are applied.
        """
        if self._in is not _In.DELTAS:
            raise self._fail("DELTA during a state transfer")
        start = end = self._expect_from
        joined: ConversationMap | None = None
        nbytes = 0
        error = None
        for m in group:
            if m.start != end:
                error = f"DELTA starts at {m.start}, expected {end}"
                break
            try:
                delta = codec.decode_map(m.payload, self.replica.schema, self.config.limits)
            except DecodeError as e:
                error = f"DELTA: {e}"
                break
            joined = delta if joined is None else joined.join(delta)
            end, nbytes = m.end, nbytes + len(m.payload)
        events: list[Event] = []
        if joined is not None:
            try:
                # apply_map records the resume point only if it moves forward: a second
                # connection to the same peer (net.py keeps one, but two overlap for a
                # moment) may deliver an interval older than one already applied.
                changed = self.replica.apply_map(joined, self.peer_id, received=(self.peer_id, end))
            except (ClockDriftError, DecodeError) as e:
                if len(group) == 1:
                    raise self._fail(f"refused: {e}") from None
                # Refused as a whole: apply one by one, so the frames before the refused one
                # still count (and the peer resumes after them); that one is refused alone.
                for m in group:
                    events.extend(self._on_deltas([m]))
                return events
            self._expect_from = end
            self._send(Ack(seq=end))
            events.append(DeltaApplied(start=start, end=end, changed=frozenset(changed),
                                       nbytes=nbytes))
        if error is not None:
            raise self._fail(error)
        return events

    def _on_state_chunk(self, m: StateChunk) -> list[Event]:
        events: list[Event] = []
        if self._in is _In.DELTAS:
            self._in = _In.STATE
            self._chunks_received = 0
            events.append(StateTransferStarted(outbound=False))
        changed = self._apply(self._decode(m.payload, "STATE_CHUNK"), None)
        self._chunks_received += 1
        self._send(ChunkAck(count=self._chunks_received))
        events.append(DeltaApplied(start=self._expect_from, end=self._expect_from,
                                   changed=frozenset(changed), nbytes=len(m.payload)))
        return events

    def _on_state_end(self, seq: int) -> list[Event]:
        # The peer's whole state up to `seq` is now here: resume its log from there.
        self._apply(ConversationMap.bottom(self.replica.schema), (self.peer_id, seq))
        self._in = _In.DELTAS
        self._expect_from = seq
        self._send(Ack(seq=seq))
        return [StateTransferFinished(outbound=False, seq=seq)]

    def _on_ack(self, seq: int) -> list[Event]:
        if self._out is _Out.WAIT_RESUME:
            return self._resume_from(seq)
        if seq > self._sent_upto or seq < self._acked:
            raise self._fail(f"ACK {seq} outside the unacknowledged range "
                             f"[{self._acked}, {self._sent_upto}]")
        while self._inflight and self._inflight[0] <= seq:
            self._inflight.pop(0)
        if seq > self._acked:
            self._acked = seq
            self.replica.record_ack(self.peer_id, seq)
        return [PeerAcked(seq=seq)]

    def _resume_from(self, seq: int) -> list[Event]:
        head, floor = self.replica.head, self.replica.log_floor
        if floor <= seq <= head:
            self._out = _Out.DELTAS
            self._sent_upto = self._acked = seq
            self.replica.record_ack(self.peer_id, seq)
            return [PeerAcked(seq=seq)]
        # Entries after `seq` were dropped (or the peer claims more than we have, as after a
        # restore from backup): send the whole state, then stream from the head we started at.
        self._sent_upto = self._acked = 0
        return [self._start_transfer()]

    def _start_transfer(self) -> StateTransferStarted:
        self._out = _Out.STATE_TRANSFER
        self._transfer_after = None
        self._transfer_head = self.replica.head
        self._chunks_sent = self._chunks_acked = 0
        return StateTransferStarted(outbound=True)

    # -- producing deltas ------------------------------------------------------------------------

    @property
    def unacked_frames(self) -> int:
        return len(self._inflight) + self._chunks_sent - self._chunks_acked

    def pump(self) -> int:
        """Queue DELTA (or STATE_CHUNK) frames for log entries the peer has not been sent,
        as far as the in-flight window allows; returns how many frames were queued."""
        if self.state is not State.OPEN or self._out is _Out.WAIT_RESUME:
            return 0
        queued = 0
        cfg = self.config
        while self.unacked_frames < cfg.max_unacked_frames:
            if self._out is _Out.STATE_TRANSFER:
                chunk, after = self.replica.state_chunk(
                    self._transfer_after, cfg.max_conversations_per_chunk, cfg.max_delta_bytes)
                if not chunk.is_bottom():
                    self._send(StateChunk(payload=codec.encode_map(chunk)))
                    self._chunks_sent += 1
                    queued += 1
                self._transfer_after = after
                if after is None:
                    self._send(StateEnd(seq=self._transfer_head))
                    self._out = _Out.DELTAS
                    self._sent_upto = self._transfer_head
                    self._inflight.append(self._transfer_head)
                    queued += 1
                continue
            try:
                end, delta = self.replica.delta_interval(
                    self._sent_upto, skip_origin=self.peer_id,
                    max_entries=cfg.max_entries_per_delta, max_bytes=cfg.max_delta_bytes)
                if end == self._sent_upto:
                    break
                payload = codec.encode_map(delta or ConversationMap.bottom(self.replica.schema))
                if len(payload) > cfg.max_frame_bytes - _DELTA_OVERHEAD:
                    raise LogTrimmedError("one log entry is larger than a frame")
            except LogTrimmedError:
                # Entries not yet sent were dropped meanwhile (the retention bound), or one is
                # too large for a frame: a DELTA would skip them silently and its ACK cover
                # them, or be refused forever. Send the state instead, once what is in flight
                # is acknowledged (chunk counts restart per transfer).
                if self.unacked_frames:
                    break
                self._pending_events.append(self._start_transfer())
                continue
            self._send(Delta(start=self._sent_upto, end=end, payload=payload))
            self._inflight.append(end)
            self._sent_upto = end
            queued += 1
        return queued

    @property
    def caught_up(self) -> bool:
        """True when the peer acknowledged everything in our log as of now."""
        return (self.state is State.OPEN and self._out is _Out.DELTAS
                and self._acked >= self.replica.head and not self.unacked_frames)

    # -- time ------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Heartbeats: PING after `ping_interval` of our silence; close after `idle_timeout`
        of the peer's, or `handshake_timeout` without its HELLO (raises
        RemoteProtocolError, with an ERROR frame queued)."""
        if self.state is State.CLOSED:
            return
        if (self.state is State.AWAIT_HELLO
                and now - self._started > self.config.handshake_timeout):
            raise self._fail(f"no HELLO within {self.config.handshake_timeout:g} s")
        if now - self._last_received > self.config.idle_timeout:
            raise self._fail(f"peer silent for {now - self._last_received:.1f} s")
        if self.state is State.OPEN and now - self._last_sent >= self.config.ping_interval:
            self._nonce += 1
            self._ping = (self._nonce, now)
            self._send(Ping(nonce=self._nonce))

    @property
    def output_backlog(self) -> int:
        """Bytes queued for the peer and not yet taken by data_to_send()."""
        return len(self._outgoing)

    def sent_at(self, now: float) -> None:
        """Tell the session that its queued bytes went out at `now` (for heartbeats)."""
        self._last_sent = now
