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

Authentication (specs/security.md) is part of the handshake: with a pre-shared key, each side
proves it holds the key by an HMAC-SHA256 over both sides' fresh nonces, replica ids and roles
(AUTH) -- the dialer first, the acceptor only once the dialer's verified -- and nothing but
AUTH or ERROR is accepted before the peer's AUTH verifies. The
transport may also have authenticated the peer (mutual TLS, net.py) and passes in the
identity it verified. Once the peer's identity is known, `SecurityConfig.scopes` limits what
is sent to it and what it may send to conversation id prefixes.

State table (one per session; each direction's sub-state is noted beside it):

    AWAIT_HELLO --HELLO ok, no key named--> OPEN --ERROR / bad input / close()--> CLOSED
    AWAIT_HELLO --HELLO ok, key named (the dialer sends AUTH)--> AWAIT_AUTH
    AWAIT_AUTH --AUTH verifies (the acceptor sends AUTH)--> OPEN
    AWAIT_HELLO, AWAIT_AUTH --anything else--> CLOSED (error)
    OPEN: outbound  WAIT_RESUME --first ACK--> DELTAS | STATE_TRANSFER (behind the log floor,
                    or the peer's scope widened) --STATE_END sent--> DELTAS
                    DELTAS --entries not yet sent were trimmed, nothing in flight--> STATE_TRANSFER
          inbound   DELTAS --STATE_CHUNK--> STATE --STATE_END--> DELTAS
"""

from __future__ import annotations

import enum
import hmac
import secrets
from dataclasses import dataclass, field

from .. import codec
from ..crdt import ConversationMap
from ..errors import ClockDriftError, DecodeError, LogTrimmedError, PeerIdentityError
from ._auth import SecurityConfig, covers, handshake_mac
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (DeltaApplied, Event, HandshakeComplete, PeerAcked, PeerClosed,
                      PongReceived, StateTransferFinished, StateTransferStarted)
from ._messages import (NONCE_BYTES, PROTOCOL_VERSION, Ack, Auth, ChunkAck, Delta, Error,
                        FrameDecoder, Hello, Message, Ping, Pong, StateChunk, StateEnd,
                        encode_frame, message_name)
from ._port import ReplicaPort

__all__ = ["SessionConfig", "State", "SyncSession"]

_DELTA_OVERHEAD = 64  # frame header and DELTA fields around the payload, generously
_MAX_DELTA_GROUP = 64  # DELTAs that arrived together, applied in one transaction


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
    # Before the peer is authenticated, frames are only HELLO, AUTH or ERROR: a small bound
    # keeps an unauthenticated peer from making us buffer max_frame_bytes.
    max_handshake_frame_bytes: int = 4096
    # Seconds from a frame's first byte to its last: a peer trickling a frame byte by byte
    # keeps the idle timeout at bay but not this one ("slowloris").
    frame_timeout: float = 60.0
    limits: codec.Limits = field(default_factory=lambda: codec.DEFAULT_LIMITS)




class State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
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
    State.AWAIT_AUTH: (Auth, Error),
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

    `auth` (a SecurityConfig) turns on authentication and authorization; without it the
    session authenticates nobody and refuses a peer that wants to. `dialed` says that we
    opened the connection (the dialing side names the key, and each AUTH is bound to its
    sender's role). `tls_identity` is the peer's identity as verified by the transport.
    """

    def __init__(self, replica: ReplicaPort, config: SessionConfig | None = None,
                 auth: SecurityConfig | None = None, *, dialed: bool = False,
                 tls_identity: str | None = None):
        self.replica = replica
        self.config = config or SessionConfig()
        self.state = State.AWAIT_HELLO
        self.peer_id: str | None = None
        self.peer_identity: str | None = None  # known once OPEN
        self.scope: tuple[str, ...] | None = None  # the peer's prefixes once OPEN; None: all
        self._security = auth or SecurityConfig()
        self._dialed = dialed
        self._tls_identity = tls_identity
        self._key_id = self._security.dial_key_id if dialed else None
        if dialed and self._security.keys and self._key_id is None:
            raise LocalProtocolError("several keys and no SecurityConfig.key_id: which one "
                                     "should the dialing side name?")
        self._hello_nonce = secrets.token_bytes(NONCE_BYTES)
        self._peer_frame_bytes = self.config.max_frame_bytes  # until the peer's HELLO says
        self._widened = False  # the peer's scope is wider than its acks were earned under
        self._frame_budget = self.config.max_delta_bytes
        self._peer_nonce = b""
        self._partial_since: float | None = None  # when the frame now buffered began
        self._decoder = FrameDecoder(min(self.config.max_frame_bytes,
                                         self.config.max_handshake_frame_bytes))
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
        self._send(Hello(version=PROTOCOL_VERSION, replica_id=self.replica.id,
                         nonce=self._hello_nonce, key_id=self._key_id,
                         max_frame_bytes=self.config.max_frame_bytes))

    def close(self, reason: str) -> None:
        """Queue an ERROR frame telling the peer why we close (no-op once closed)."""
        if self.state is not State.CLOSED:
            self._send(Error(reason=reason))
            self.state = State.CLOSED

    def _fail(self, reason: str, *, told: str | None = None) -> RemoteProtocolError:
        """Close with ERROR and return the error to raise. `told`: what the peer is told,
        when the full reason (logged here) would tell an untrusted peer too much."""
        self.close(told or reason)
        return RemoteProtocolError(reason, told)

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
        decoded = self._decoder.frames_decoded
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
            e.events = events + e.events
            raise
        if not self._decoder.buffered:
            self._partial_since = None
        elif self._partial_since is None or self._decoder.frames_decoded != decoded:
            self._partial_since = now  # a new frame began in these bytes
        return events

    def _handle(self, m: Message, now: float) -> list[Event]:
        if not isinstance(m, _ACCEPTS[self.state]):
            raise self._fail(f"unexpected {message_name(m)} in state {self.state.value}")
        if isinstance(m, Error):
            self.state = State.CLOSED
            return [PeerClosed(reason=m.reason)]
        if isinstance(m, Hello):
            return self._on_hello(m)
        if isinstance(m, Auth):
            return self._on_auth(m)
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
        self._peer_nonce = m.nonce
        # What we send must fit the peer's frame limit as well as our own budget per frame.
        self._frame_budget = min(self.config.max_delta_bytes,
                                 m.max_frame_bytes - _DELTA_OVERHEAD)
        self._peer_frame_bytes = m.max_frame_bytes
        keys = self._security.keys
        if self._dialed:
            if m.key_id is not None:
                raise self._fail(f"the accepting side named key {m.key_id!r}: only the "
                                 "dialing side names the key")
            key_id = self._key_id
        else:
            key_id = self._key_id = m.key_id
        if key_id is None:
            if keys:
                raise self._fail("authentication required: the dialing side named no key")
            return self._open(self._tls_identity)
        if not keys:
            raise self._fail(f"the peer authenticates with key {key_id!r}, but no keys are "
                             "configured here")
        # The dialer proves the key first; the acceptor answers only once that verified.
        # Were the acceptor to answer a HELLO at once, anyone who can reach its port would
        # get an HMAC under the key to test guessed secrets against offline.
        if self._dialed:
            self._send(Auth(mac=self._mac(keys[key_id], sent_by_us=True)))
        self.state = State.AWAIT_AUTH
        return []

    def _mac(self, secret: bytes, *, sent_by_us: bool) -> bytes:
        """The AUTH MAC of this connection: ours (`sent_by_us`) or the one the peer owes."""
        assert self.peer_id is not None and self._key_id is not None  # set by the HELLO
        ours = (self.replica.id, self._hello_nonce, self._dialed)
        theirs = (self.peer_id, self._peer_nonce, not self._dialed)
        (sender, sender_nonce, sender_dialed), (receiver, receiver_nonce, _) = (
            (ours, theirs) if sent_by_us else (theirs, ours))
        return handshake_mac(secret, key_id=self._key_id, sender=sender, receiver=receiver,
                             sender_dialed=sender_dialed, sender_nonce=sender_nonce,
                             receiver_nonce=receiver_nonce)

    def _on_auth(self, m: Auth) -> list[Event]:
        secret = self._security.keys.get(self._key_id)
        # The same answer for an unknown key id as for a wrong MAC, so that the key ids a
        # replica holds cannot be listed by asking.
        if secret is None or not hmac.compare_digest(
                m.mac, self._mac(secret, sent_by_us=False)):
            known = "" if secret is not None else " (no such key here)"
            raise self._fail(f"authentication failed: the peer does not prove key "
                             f"{self._key_id!r}{known} (wrong secret, or a replayed "
                             "handshake)", told="authentication failed")
        if not self._dialed:
            self._send(Auth(mac=self._mac(secret, sent_by_us=True)))
        return self._open(self._key_id)

    def _open(self, identity: str | None) -> list[Event]:
        """The peer is who it says (or nobody asked): authorize it, then start streaming."""
        scopes = self._security.scopes
        if scopes is not None:
            if identity is None:
                raise self._fail("not authorized: the peer has no identity (no key, no "
                                 "certificate) and an authorization list is configured")
            if identity not in scopes:
                raise self._fail(f"not authorized: identity {identity!r} is not in the "
                                 "authorization list")
            self.scope = scopes[identity]
        # Where identities have different rights, a replica id is bound to the identity it
        # first authenticated as, so no peer can move another's resume point. The key id we
        # named ourselves says nothing about which peer answered: only a key id the peer
        # proved to us, or its certificate, binds.
        if (scopes is not None and identity is not None
                and not (self._dialed and identity == self._key_id)):
            try:
                self.replica.bind_peer(self.peer_id, identity)
            except PeerIdentityError as e:  # the peer is not told whose id it claimed
                raise self._fail(f"not authorized: {e}", told="not authorized: replica id "
                                 f"{self.peer_id} belongs to another identity") from None
        self.peer_identity = identity
        self._check_sent_scope()
        self.state = State.OPEN
        self._decoder.max_frame_bytes = self.config.max_frame_bytes
        # Our first ACK tells the peer where to resume streaming its log to us.
        self._expect_from = self.replica.received_from(self.peer_id)
        self._send(Ack(seq=self._expect_from))
        return [HandshakeComplete(peer_id=self.peer_id, identity=identity, scope=self.scope)]

    def _check_sent_scope(self) -> None:
        """Compare the peer's scope with the one its acknowledgements were earned under.

        A DELTA to a scoped peer still covers its whole interval, so what the peer has
        acknowledged left out everything outside its scope at the time. If the scope is now
        wider, resuming from that ack would never send what was left out: the peer gets a
        state transfer (within its new scope) instead, and the new scope is recorded once it
        has acknowledged the transfer. A narrower or equal scope is recorded at once.
        """
        earned = self.replica.sent_scope(self.peer_id)
        if covers(earned, self.scope):
            if earned != self.scope:
                self.replica.set_sent_scope(self.peer_id, self.scope)
        else:
            self._widened = True

    def _outside_scope(self, delta: ConversationMap) -> str | None:
        """A conversation id of `delta` the peer may not replicate, or None."""
        if self.scope is None:
            return None
        for cid in delta:
            if not cid.startswith(self.scope):
                return cid
        return None

    def _within_scope(self, delta: ConversationMap) -> ConversationMap:
        """`delta` less the conversations the peer may not see."""
        if self.scope is None or self._outside_scope(delta) is None:
            return delta
        return ConversationMap({cid: delta.fields(cid) for cid in delta
                                if cid.startswith(self.scope)}, delta.schema)

    def _scope_refusal(self, what: str, cid: str) -> str:
        return (f"{what}: conversation {cid!r:.80} is outside the scope of "
                f"{self.peer_identity!r} ({', '.join(map(repr, self.scope or ()))})")

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
        deltas: list[ConversationMap] = []
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
            outside = self._outside_scope(delta)
            if outside is not None:  # refused whole: nothing of this frame is applied
                error = self._scope_refusal("DELTA", outside)
                break
            deltas.append(delta)
            end, nbytes = m.end, nbytes + len(m.payload)
        events: list[Event] = []
        if deltas:
            # One pass over the group (folding join would copy the growing map per frame).
            joined = deltas[0] if len(deltas) == 1 else deltas[0].join_all(deltas[1:])
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
                    try:
                        events.extend(self._on_deltas([m]))
                    except RemoteProtocolError as e:
                        e.events = events + e.events
                        raise
                return events
            self._expect_from = end
            self._send(Ack(seq=end))
            events.append(DeltaApplied(start=start, end=end, changed=frozenset(changed),
                                       nbytes=nbytes))
        if error is not None:
            refusal = self._fail(error)
            refusal.events = events  # the frames before it were applied
            raise refusal
        return events

    def _on_state_chunk(self, m: StateChunk) -> list[Event]:
        events: list[Event] = []
        if self._in is _In.DELTAS:
            self._in = _In.STATE
            self._chunks_received = 0
            events.append(StateTransferStarted(outbound=False))
        try:
            chunk, wire = codec.decode_map_as_received(m.payload, self.replica.schema,
                                                       self.config.limits)
        except DecodeError as e:
            raise self._fail(f"STATE_CHUNK: {e}") from None
        outside = self._outside_scope(chunk)
        if outside is not None:
            raise self._fail(self._scope_refusal("STATE_CHUNK", outside))
        try:
            changed = self.replica.apply_state_chunk(chunk, wire, self.peer_id)
        except (ClockDriftError, DecodeError) as e:
            raise self._fail(f"refused: {e}") from None
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
        if self._widened and self._out is _Out.DELTAS and seq >= self._transfer_head:
            # The peer holds everything in its new scope as of the transfer: acks are now
            # earned under that scope.
            self._widened = False
            self.replica.set_sent_scope(self.peer_id, self.scope)
        return [PeerAcked(seq=seq)]

    def _resume_from(self, seq: int) -> list[Event]:
        head, floor = self.replica.head, self.replica.log_floor
        if floor <= seq <= head and not self._widened:
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
                # The stored bytes go out as they are, filtered to the peer's scope.
                payload, after = self.replica.encoded_state_chunk(
                    self._transfer_after, cfg.max_conversations_per_chunk,
                    self._frame_budget, self.scope)
                if payload is not None:
                    self._send(StateChunk(payload=payload))
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
                    max_entries=cfg.max_entries_per_delta, max_bytes=self._frame_budget)
                if end == self._sent_upto:
                    break
                if delta is not None:
                    # The interval still advances over what the peer may not see: its ACK
                    # covers the whole interval, as for entries left out as its own.
                    delta = self._within_scope(delta)
                payload = codec.encode_map(delta or ConversationMap.bottom(self.replica.schema))
                if len(payload) > self._peer_frame_bytes - _DELTA_OVERHEAD:
                    raise LogTrimmedError("one log entry is larger than the peer's frames")
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
        if (self.state is State.AWAIT_AUTH
                and now - self._started > self.config.handshake_timeout):
            raise self._fail(f"no AUTH within {self.config.handshake_timeout:g} s")
        if now - self._last_received > self.config.idle_timeout:
            raise self._fail(f"peer silent for {now - self._last_received:.1f} s")
        if (self._partial_since is not None
                and now - self._partial_since > self.config.frame_timeout):
            raise self._fail(f"a frame took more than {self.config.frame_timeout:g} s to "
                             "arrive (bytes trickled too slowly)")
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
