"""The sync session: delta-state anti-entropy between two replicas, sans-IO.

Modelled on h11: a `SyncSession` is fed the bytes that arrived (`receive_data`) and returns
what happened as events; what it wants sent accumulates and is taken with `data_to_send()`.
It never touches a socket, a clock or trio, and reaches the replica only through the typed
`ReplicaPort` contract (_port.py), so a test can drive two sessions with no network at all,
`net.py` drives them over trio TCP streams, and an embedding app over its own WebSocket.

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
AUTH or ERROR is accepted before the peer's AUTH verifies. The transport may also have
authenticated the peer (mutual TLS, net.py) and passes in the identity it verified. Once the
peer's identity is known, `SecurityConfig.scopes` limits what is sent to it and what it may
send to conversation id prefixes.

The session is the connection state and the dispatch; each concern is its own room:
_handshake.py (HELLO, AUTH, authorization), _outbound.py (our log to the peer), _inbound.py
(the peer's log applied here). Every state, of the session and of each direction, moves only
along a row of `_state.TRANSITIONS`, the one table of them all:

    AWAIT_HELLO --HELLO ok, no key named--> OPEN --ERROR / bad input / close()--> CLOSED
    AWAIT_HELLO --HELLO ok, key named (the dialer sends AUTH)--> AWAIT_AUTH
    AWAIT_AUTH --AUTH verifies (the acceptor sends AUTH)--> OPEN
    AWAIT_HELLO, AWAIT_AUTH --anything else--> CLOSED (error)
    OPEN: sending    WAIT_RESUME --first ACK--> DELTAS | STATE_TRANSFER (behind the log floor,
                     or the peer's scope widened) --STATE_END sent--> DELTAS
                     DELTAS --unsent entries trimmed, nothing in flight--> STATE_TRANSFER
          receiving  DELTAS --STATE_CHUNK--> STATE --STATE_END--> DELTAS

A refusal of the peer's input is a RemoteProtocolError raised from wherever it is found; the
session catches it in receive_data, queues an ERROR frame telling the peer `told`, and
closes. Nothing of the refused frame is applied.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .. import codec
from ._auth import SecurityConfig
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Event, HandshakeComplete, PeerClosed, PongReceived
from ._handshake import Handshake
from ._inbound import Inbound
from ._messages import (
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    ChunkAck,
    CompactDelta,
    Delta,
    Error,
    FrameDecoder,
    Have,
    Hello,
    Message,
    Ping,
    Pong,
    StateChunk,
    StateEnd,
    encode_frame,
    message_name,
)
from ._outbound import Outbound
from ._port import ReplicaPort
from ._reconcile import ReconAnswer, ReconcileResponder, ReconRanges
from ._relay import PeerRelay, RelayIndex, have_frame, read_have
from ._state import Sending, State, accepts, after
from ._table import ReceivedIds

__all__ = ["SessionConfig", "State", "SyncSession"]

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
    # Reconciliation instead of a whole state transfer for a peer behind our log floor that
    # has received from us before (specs/protocol.md §13): parts a differing range is split
    # into, the size under which its items' hashes are sent instead, ranges per frame.
    reconcile: bool = True
    reconcile_branching: int = 4
    reconcile_leaf_items: int = 2
    reconcile_ranges_per_frame: int = 1024


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
                 tls_identity: str | None = None, relay: RelayIndex | None = None):
        self.replica = replica
        self.config = cfg = config or SessionConfig()
        self.state = State.AWAIT_HELLO
        self.peer_identity: str | None = None  # known once OPEN
        self.scope: tuple[str, ...] | None = None  # the peer's prefixes once OPEN; None: all
        self._handshake = Handshake(replica, auth or SecurityConfig(), dialed=dialed,
                                    tls_identity=tls_identity,
                                    nonce=secrets.token_bytes(NONCE_BYTES))
        # Shared with the replica's other sessions: not relaying what a peer holds (§12).
        self._relay = PeerRelay(relay) if relay is not None else None
        self._outbound = Outbound(replica, max_frame_bytes=cfg.max_frame_bytes,
                                  max_delta_bytes=cfg.max_delta_bytes, send=self._send,
                                  relay=self._relay)
        self._inbound = Inbound(replica, cfg.limits, send=self._send, relay=self._relay)
        self._peer_ids = ReceivedIds()  # the peer's session table (specs/protocol.md §11)
        if cfg.reconcile:
            self._outbound.allow_reconcile(branching=cfg.reconcile_branching,
                                           leaf_items=cfg.reconcile_leaf_items,
                                           ranges_per_frame=cfg.reconcile_ranges_per_frame)
        self._responder = ReconcileResponder(lambda: replica.conversation_digests(self.scope))
        self._partial_since: float | None = None  # when the frame now buffered began
        self._decoder = FrameDecoder(min(cfg.max_frame_bytes, cfg.max_handshake_frame_bytes))
        self._outgoing = bytearray()
        self._last_sent = 0.0
        self._last_received = 0.0
        self._started = 0.0
        self._ping: tuple[int, float] | None = None
        self._nonce = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def peer_id(self) -> str | None:
        """The peer's replica id, from its HELLO: None until a HELLO of our version, not
        from ourselves, arrived (also when the handshake then failed, for the logs)."""
        return self._handshake.peer_id or None

    @property
    def connected_to_self(self) -> bool:
        """The peer's HELLO carried our own replica id: this connection reached ourselves
        (our own address, or a copy of our data directory); the session refused it."""
        return self._handshake.to_self

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

    @property
    def output_backlog(self) -> int:
        """Bytes queued for the peer and not yet taken by data_to_send()."""
        return len(self._outgoing)

    def sent_at(self, now: float) -> None:
        """Tell the session that its queued bytes went out at `now` (for heartbeats)."""
        self._last_sent = now

    # -- lifecycle -----------------------------------------------------------------------------

    def initiate(self, now: float = 0.0) -> None:
        """Queue our HELLO; both sides call this (the protocol is symmetric)."""
        if self.state is not State.AWAIT_HELLO:
            raise LocalProtocolError("initiate() after the handshake")
        self._last_sent = self._last_received = self._started = now
        self._send(Hello(version=PROTOCOL_VERSION, replica_id=self.replica.id,
                         nonce=self._handshake.nonce, key_id=self._handshake.key_id,
                         max_frame_bytes=self.config.max_frame_bytes))

    def close(self, reason: str) -> None:
        """Queue an ERROR frame telling the peer why we close (no-op once closed)."""
        if self.state is not State.CLOSED:
            self._send(Error(reason=reason))
            self.state = after(self.state, "close")
        self.ended()

    def ended(self) -> None:
        """The connection is gone (closed, lost, dropped): the peer no longer streams to
        this replica through it, so its other sessions must not wait for it (§12). The
        owner calls this when a connection ends without the session closing it; a closed
        session has done it already. Idempotent."""
        if self._relay is not None:
            self._relay.close()

    def _fail(self, reason: str) -> RemoteProtocolError:
        """Close with ERROR and return the error to raise."""
        self.close(reason)
        return RemoteProtocolError(reason)

    # -- incoming bytes ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray, now: float = 0.0) -> list[Event]:
        """Process bytes from the peer; returns what happened, in order.

        Raises RemoteProtocolError (after queueing an ERROR frame) for anything the peer
        should not have sent; nothing of the offending frame is applied.
        """
        if self.state is State.CLOSED:
            return []
        self._last_received = now
        self.bytes_received += len(data)
        events, self._outbound.events = self._outbound.events, []  # from pump()
        decoded = self._decoder.frames_decoded
        try:
            self._decoder.feed(data)
            lookahead: Message | None = None
            while not self._closed:
                m, lookahead = lookahead or self._next_message(), None
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
                        nxt = self._next_message()
                    except RemoteProtocolError as e:
                        bad = e
                        break
                    if not isinstance(nxt, Delta):
                        lookahead = nxt
                        break
                    group.append(nxt)
                events.extend(self._inbound.on_deltas(group))
                if bad is not None:
                    raise bad
        except RemoteProtocolError as e:
            self.close(e.told)
            e.events = events + e.events
            raise
        if not self._decoder.buffered:
            self._partial_since = None
        elif self._partial_since is None or self._decoder.frames_decoded != decoded:
            self._partial_since = now  # a new frame began in these bytes
        return events

    def _next_message(self) -> Message | None:
        """The next complete frame's message; once OPEN, a COMPACT_DELTA comes out as the
        DELTA it stands for, its ids read from the peer's session table (§11), so that it
        is grouped, checked and applied as one (before OPEN it is refused as it came)."""
        m = self._decoder.next_message()
        if isinstance(m, CompactDelta) and self.state is State.OPEN:
            return Delta(start=m.start, end=m.end, payload=self._peer_ids.payload(m))
        return m

    @property
    def _closed(self) -> bool:
        # A method, not a comparison in place: handlers move self.state, which mypy's
        # narrowing of the attribute cannot see.
        return self.state is State.CLOSED

    def _handle(self, m: Message, now: float) -> list[Event]:
        name = message_name(m)
        if not accepts(self.state, name):
            raise RemoteProtocolError(f"unexpected {name} in state {self.state.value}")
        if isinstance(m, Error):
            self.state = after(self.state, name)
            self.ended()
            return [PeerClosed(reason=m.reason)]
        if isinstance(m, Hello):
            return self._on_hello(m)
        if isinstance(m, Auth):
            return self._on_auth(m)
        if isinstance(m, Delta):
            return self._inbound.on_deltas([m])
        if isinstance(m, CompactDelta):  # turned into a DELTA once OPEN (_next_message)
            raise LocalProtocolError("COMPACT_DELTA reached the dispatch")
        if isinstance(m, Have):
            self._on_have(m)
            return []
        if isinstance(m, StateChunk):
            return self._inbound.on_state_chunk(m)
        if isinstance(m, StateEnd):
            self._responder.reset()
            return self._inbound.on_state_end(m.seq)
        if isinstance(m, ReconRanges):
            # The peer reconciles towards us (§13): answered only before its transfer.
            if not accepts(self._inbound.state, "RECON_RANGES"):
                raise RemoteProtocolError("RECON_RANGES during a state transfer")
            self._send(self._responder.answer(m))
            return []
        if isinstance(m, ReconAnswer):
            self._outbound.on_recon_answer(m)
            return []
        if isinstance(m, Ack):
            return self._outbound.on_ack(m.seq)
        if isinstance(m, ChunkAck):
            self._outbound.on_chunk_ack(m.count)
            return []
        if isinstance(m, Ping):
            self._send(Pong(nonce=m.nonce))
            return []
        if self._ping is not None and self._ping[0] == m.nonce:  # a PONG
            rtt = now - self._ping[1]
            self._ping = None
            return [PongReceived(rtt=rtt)]
        return []

    # -- the handshake -------------------------------------------------------------------------

    def _on_hello(self, m: Hello) -> list[Event]:
        key_named = self._handshake.on_hello(m)
        self._outbound.peer_limits(m.max_frame_bytes)
        if not key_named:
            self.state = after(self.state, "HELLO")
            return self._open(self._handshake.tls_identity)
        # The dialer proves the key first; the acceptor answers only once that verified.
        # Were the acceptor to answer a HELLO at once, anyone who can reach its port would
        # get an HMAC under the key to test guessed secrets against offline.
        if self._handshake.dialed:
            self._send(self._handshake.our_auth())
        self.state = after(self.state, "HELLO naming a key")
        return []

    def _on_auth(self, m: Auth) -> list[Event]:
        identity = self._handshake.on_auth(m)
        if not self._handshake.dialed:
            self._send(self._handshake.our_auth())
        self.state = after(self.state, "AUTH")
        return self._open(identity)

    def _open(self, identity: str | None) -> list[Event]:
        """The peer is who it says (or nobody asked): authorize it, then start streaming."""
        peer = self._handshake.peer_id
        self.scope = self._handshake.authorize(identity)
        self.peer_identity = identity
        self._outbound.open(peer, self.scope)
        if self._relay is not None:
            self._relay.open(peer, filtered=self.scope is not None)
        self._decoder.max_frame_bytes = self.config.max_frame_bytes
        self._inbound.open(peer, identity, self.scope)
        return [HandshakeComplete(peer_id=peer, identity=identity, scope=self.scope)]

    def _on_have(self, m: Have) -> None:
        read_have(m, self._peer_ids, self._relay)

    def _send_have(self) -> None:
        assert self._relay is not None
        have = have_frame(self._relay, self._outbound.ids)
        if have is not None:
            self._send(have)

    # -- producing frames ----------------------------------------------------------------------

    @property
    def unacked_frames(self) -> int:
        return self._outbound.unacked_frames

    def pump(self) -> int:
        """Queue DELTA (or STATE_CHUNK) frames for log entries the peer has not been sent,
        as far as the in-flight window allows; returns how many frames were queued."""
        if self.state is not State.OPEN:
            return 0
        if self._relay is not None:
            self._send_have()
        cfg = self.config
        return self._outbound.pump(max_unacked_frames=cfg.max_unacked_frames,
                                   max_entries_per_delta=cfg.max_entries_per_delta,
                                   max_conversations_per_chunk=cfg.max_conversations_per_chunk)

    @property
    def reconciling(self) -> bool:
        """True while we reconcile our state towards the peer (specs/protocol.md §13)."""
        return self.state is State.OPEN and self._outbound.state is Sending.RECONCILE

    @property
    def caught_up(self) -> bool:
        """True when the peer holds everything in our log as of now: acknowledged, or
        entries that came from the peer itself (which are not sent back)."""
        return self.state is State.OPEN and self._outbound.caught_up

    # -- time ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Heartbeats: PING after `ping_interval` of our silence; close after `idle_timeout`
        of the peer's, or `handshake_timeout` without its HELLO (raises
        RemoteProtocolError, with an ERROR frame queued)."""
        if self.state is State.CLOSED:
            return
        cfg = self.config
        if self.state is State.AWAIT_HELLO and now - self._started > cfg.handshake_timeout:
            raise self._fail(f"no HELLO within {cfg.handshake_timeout:g} s")
        if self.state is State.AWAIT_AUTH and now - self._started > cfg.handshake_timeout:
            raise self._fail(f"no AUTH within {cfg.handshake_timeout:g} s")
        if now - self._last_received > cfg.idle_timeout:
            raise self._fail(f"peer silent for {now - self._last_received:.1f} s")
        if self._partial_since is not None and now - self._partial_since > cfg.frame_timeout:
            raise self._fail(f"a frame took more than {cfg.frame_timeout:g} s to "
                             "arrive (bytes trickled too slowly)")
        if self.state is State.OPEN and now - self._last_sent >= cfg.ping_interval:
            self._nonce += 1
            self._ping = (self._nonce, now)
            self._send(Ping(nonce=self._nonce))
