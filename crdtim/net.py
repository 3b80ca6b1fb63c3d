"""trio transport for sync sessions: serve, dial peers, keep one link per peer. It must never
hold CRDT or storage logic (the session's and the replica's), nor drive a session's bytes
(each connection's `_link.Link` does).

A `Node` runs a replica's replication (specs/protocol.md §9): it listens (refusing connections
over `max_peers`), dials its peers (exponential backoff with full jitter), and runs one
`_link.Link` per connection, which drives its `protocol.SyncSession` with one receiver task
and one sender task. The Node wakes the senders on a local commit and on writes made to the
same directory by other processes (noticed by polling the log head), and keeps one link per
peer when both sides dial. Back-pressure: a session keeps at most `max_unacked_frames` frames
in flight and `send_all` blocks on a full socket, so nothing is buffered without bound.

Security (specs/security.md): with `NodeConfig.tls`, every connection is mutual TLS
(`trio.SSLStream`; a peer whose certificate does not chain to the CA never reaches the
session) and the certificate's subject is handed to the session as the peer's identity; with
`NodeConfig.security`, the session runs the pre-shared-key handshake and the authorization.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import re
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import trio

from ._link import ERROR_GRACE, Link, tls_handshake
from .errors import StoreError
from .protocol import (
    Error,
    RelayIndex,
    SecurityConfig,
    SessionConfig,
    SyncSession,
    encode_frame,
)
from .replica import Change, Replica, Subscription
from .security import TlsConfig

__all__ = ["Node", "NodeConfig", "parse_address"]

log = logging.getLogger("crdtim.net")

#: accept() errors that mean "out of resources for now": wait and accept again.
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_RETRY_DELAY = 0.1  # seconds


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[v6]:PORT' -> (host, port); ValueError naming the problem."""
    scheme, slashes, _ = text.partition("://")
    if slashes:
        # 'http://host:port' parses as host 'http://host': refused here, or it would be
        # dialed (and fail as an unknown host) forever.
        raise ValueError(f"address {text!r:.80} is a URL: give HOST:PORT, without "
                         f"{scheme[:20]}://")
    if "/" in text:
        raise ValueError(f"address {text!r:.80} is not HOST:PORT (it has a '/')")
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"address {text!r} is not HOST:PORT")
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"address {text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"address {text!r}: port {number} is not in 0..65535")
    return host, number


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    session: SessionConfig = field(default_factory=SessionConfig)
    linger: float = 0.002  # after a local commit, wait this long for more before sending
    poll_interval: float = 0.1  # how often to look for log entries written by other processes
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    max_peers: int = 64  # authenticated peers at once; more are refused
    # Accepted connections still in their handshake (TLS, HELLO, AUTH), at once and per
    # remote address: an unauthenticated flood must not take the slots of known peers
    # (specs/security.md §7).
    max_handshakes: int = 16
    max_handshakes_per_address: int = 4
    receive_size: int = 65536
    trim_interval: float = 1.0  # seconds between log trims
    security: SecurityConfig | None = None  # pre-shared keys and authorization
    tls: TlsConfig | None = None  # mutual TLS on every connection


@dataclass
class NodeStats:
    connections: int = 0
    connections_open: int = 0
    errors: int = 0
    deltas_sent: int = 0
    deltas_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    conversations_changed: int = 0
    state_transfers_sent: int = 0
    state_transfers_received: int = 0
    tls_failures: int = 0  # TLS handshakes that failed (a certificate not from our CA, ...)
    refused: int = 0  # connections refused over max_peers or the handshake limits


class Node:
    """Replicates `replica` with its peers while the `async with` block runs.

    >>> async with Node(replica, listen=("127.0.0.1", 0), peers=[("127.0.0.1", 7001)]) as node:
    ...     await node.wait_caught_up(timeout=30)
    """

    def __init__(self, replica: Replica, listen: tuple[str, int] | str | None = None,
                 peers: Iterable[tuple[str, int] | str] = (), config: NodeConfig | None = None):
        self.replica = replica
        self.config = config or NodeConfig()
        self.listen = parse_address(listen) if isinstance(listen, str) else listen
        self.peers = [parse_address(p) if isinstance(p, str) else p for p in peers]
        if self.peers:
            self._check_can_dial()
        self.stats = NodeStats()
        self.listeners: list[trio.SocketListener] = []
        self._links: dict[str, Link] = {}  # peer replica id -> the link kept for it
        # Accepted connections not yet authenticated, per remote address (their slots are
        # given back when the handshake completes or the connection ends).
        self._handshakes = _HandshakeSlots(self.config)
        self._handshake_slots: dict[Link, _HandshakeSlot] = {}
        self._seen_peers: set[str] = set()  # every peer id linked while this Node ran
        self._all_links: set[Link] = set()
        self._changed = trio.Condition()
        self._cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._subscription: Subscription | None = None
        self._known_head = 0
        self._last_housekeeping = -math.inf
        # Shared by this Node's sessions: which peer sent what, and what each peer holds,
        # so that no session relays what its peer has or is being sent directly
        # (specs/protocol.md §12). When what is linked here moves, every sender wakes: its
        # peer is told (HAVE), and may be waiting for it.
        self.relay = RelayIndex()
        self.relay.on_change = self._poke_all
        #: Replica.housekeeping()'s status, as of the last trim (about every second), for
        #: readers in other threads (metrics): a Replica is used from one thread only.
        self.status_snapshot: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        # Listen before the nursery opens, so that "address in use" reaches the caller as a
        # plain OSError rather than inside an exception group.
        if self.listen is not None:
            host, port = self.listen
            try:
                self.listeners = await trio.open_tcp_listeners(port, host=host)
            except OSError as e:
                raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._cm = cm = trio.open_nursery()
        self._nursery = nursery = await cm.__aenter__()
        try:
            self._known_head = self.replica.head
            self.replica.deliver_other_processes_changes()  # from here on
            self._subscription = self.replica.subscribe(self._on_replica_change)
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener)
            for addr in self.peers:
                nursery.start_soon(self._dial_loop, addr)
            nursery.start_soon(self._watch_log)
        except BaseException as e:
            nursery.cancel_scope.cancel()
            await cm.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._tasks.cancel_scope.cancel()
        if self._subscription is not None:
            self._subscription.close()
        assert self._cm is not None  # set together with the nursery, in __aenter__
        return await self._cm.__aexit__(*exc)

    @property
    def _tasks(self) -> trio.Nursery:
        """The nursery of the running Node (only inside `async with node`)."""
        if self._nursery is None:
            raise RuntimeError("the Node is not running: use it as `async with Node(...)`")
        return self._nursery

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        return int(self.listeners[0].socket.getsockname()[1])

    def _check_can_dial(self) -> None:
        security = self.config.security
        if security is not None and security.keys and security.dial_key_id is None:
            raise ValueError("several pre-shared keys and no key_id: say which one to name "
                             "when dialing peers (SecurityConfig.key_id)")

    def add_peer(self, addr: tuple[str, int] | str) -> None:
        addr = parse_address(addr) if isinstance(addr, str) else addr
        self._check_can_dial()
        self.peers.append(addr)
        self._tasks.start_soon(self._dial_loop, addr)

    @property
    def connected_peers(self) -> set[str]:
        return set(self._links)

    async def wait_connected(self, n: int = 1) -> None:
        async with self._changed:
            while len(self._links) < n:
                await self._changed.wait()

    async def wait_caught_up(self, n: int | None = None, *, timeout: float | None = None
                             ) -> None:
        """Until at least `n` peers (default: as many as were configured) hold everything in
        our log: acknowledged, or come from them (specs/protocol.md §9, caught up). A peer
        counts once its link completed a handshake while this Node runs; one that then left
        still counts if its last acknowledgement covers the log, so that waiting does not
        depend on which side exits first.

        `timeout` (seconds; None: no bound) raises TimeoutError naming the peers that are
        not caught up, so that a down peer cannot hang the caller forever."""
        want = len(self.peers) if n is None else n
        with trio.move_on_after(math.inf if timeout is None else timeout):
            async with self._changed:
                while True:
                    self._notice_foreign_writes()
                    if len(_caught_up_peers(self)) >= want:
                        return
                    await self._changed.wait()
        raise TimeoutError(_lag_report(self, want, timeout))

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- waking senders ----------------------------------------------------------------------------

    def _on_replica_change(self, change: Change) -> None:
        for link in list(self._links.values()):
            if change.peer != link.session.peer_id:
                link.poke()

    def _poke_all(self) -> None:
        for link in list(self._links.values()):
            link.poke()

    def _notice_foreign_writes(self) -> None:
        head = self.replica.head
        if head != self._known_head:
            # Subscribers hear of other processes' writes from here (specs/protocol.md §9).
            self.replica.deliver_other_processes_changes()
            self._known_head = head  # only once delivered: a failed read is tried again
            for link in list(self._links.values()):
                link.poke()

    async def _watch_log(self) -> None:
        # A store that fails here (a full disk, a damaged file: StoreError) must not end the
        # server: reads and the links' syncing go on, and the tick is tried again at the next
        # interval; one line per episode, not one per tick (specs/protocol.md §9, upkeep).
        polling = _FailureEpisode("looking for other processes' writes")
        upkeep = _FailureEpisode("housekeeping (applying held values, writing peers' acks, "
                                 "trimming the log)")
        while True:
            await trio.sleep(self.config.poll_interval)
            try:
                self._notice_foreign_writes()
            except StoreError as e:
                polling.failed(e, self.config.poll_interval)
            else:
                polling.succeeded()
            now = trio.current_time()
            if now - self._last_housekeeping >= self.config.trim_interval:
                self._last_housekeeping = now
                try:
                    # In the replica's own thread; the snapshot is for the metrics thread.
                    self.status_snapshot = self.replica.housekeeping()
                except StoreError as e:  # the acks stay noted in memory for the retry
                    upkeep.failed(e, self.config.trim_interval)
                else:
                    upkeep.succeeded()

    # -- connections -------------------------------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    if e.errno not in _ACCEPT_RETRY_ERRNOS:
                        raise
                    # Out of file descriptors or buffers: the peers we serve will free some;
                    # wait rather than stop accepting for good (as trio.serve_listeners does).
                    log.error("accept failed (%s); retrying in %g s", e, ACCEPT_RETRY_DELAY)
                    await trio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                address = _remote_address(stream)
                busy = self._handshakes.refusal(address)
                if busy is not None:
                    log.warning("refusing a connection from %s: %s", address, busy)
                    self.stats.refused += 1
                    if self.config.tls is None:
                        self._tasks.start_soon(_refuse, stream, busy)
                    else:  # before TLS, an ERROR frame would only be garbage to the peer
                        await trio.aclose_forcefully(stream)
                    continue
                # The slot is taken now, before the task starts, so that a burst of
                # accepts cannot overshoot the limits.
                self._tasks.start_soon(self._run_accepted, stream,
                                       self._handshakes.take(address))

    async def _run_accepted(self, stream: trio.abc.Stream, slot: _HandshakeSlot) -> None:
        try:
            await self._run_link(stream, False, None, slot)
        finally:
            self._handshakes.release(slot)

    async def _dial_loop(self, addr: tuple[str, int]) -> None:
        delay = self.config.backoff_initial
        peer_id: str | None = None
        reported: str | None = None  # the kind of failure last logged for this address
        while True:
            while peer_id is not None and peer_id in self._links:
                async with self._changed:  # connected (maybe by the peer dialing us): wait
                    await self._changed.wait()
            try:
                stream = await trio.open_tcp_stream(*addr)
            except OSError as e:
                end = _LinkEnd(None, False, f"cannot reach it: {e.strerror or e}", False)
            else:
                started = trio.current_time()
                end = await self._run_link(stream, True, addr)
                peer_id = end.peer_id
                if end.to_self:
                    log.warning("peer %s:%d is this node itself (its HELLO carries our replica "
                                "id %s: our own address, or a copy of our data directory); no "
                                "longer dialing it", *addr, self.replica.id)
                    self.peers.remove(addr)  # wait_caught_up no longer waits for it
                    await _notify_quietly(self)
                    return
                # Start again from a short delay only after a link that worked for a while:
                # a peer that accepts and then refuses us (say, a schema it cannot read)
                # must not be redialed in a tight loop.
                if end.handshook and trio.current_time() - started >= self.config.backoff_max:
                    delay = self.config.backoff_initial
            if end.handshook:
                reported = None  # it was up (its link logged that, and its end): a new state
            elif end.reason is not None and _failure_kind(end.reason) != reported:
                # A peer that keeps failing is logged once per kind of failure (a mistyped
                # or down peer must not be silent), then retried quietly (§9).
                reported = _failure_kind(end.reason)
                log.warning("peer %s:%d: %s (retrying; logged again only if that changes)",
                            *addr, end.reason)
            # Full jitter (AWS architecture blog, "Exponential Backoff And Jitter").
            await trio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, self.config.backoff_max)

    async def _run_link(self, stream: trio.abc.Stream, dialed: bool,
                        addr: tuple[str, int] | None, slot: _HandshakeSlot | None = None
                        ) -> _LinkEnd:
        """Run one connection to its end; how it ended."""
        tls_identity = None
        if self.config.tls is not None:
            # An accepted connection holds its handshake slot (`slot`) through TLS too.
            tls_stream, tls_identity, failure = await tls_handshake(
                stream, self.config.tls, self.config.session.handshake_timeout,
                dialed=dialed, addr=addr)
            if tls_stream is None:
                self.stats.tls_failures += 1
                await _notify_quietly(self)  # (stats changed: tests and status wait on this)
                return _LinkEnd(None, False, failure, False)
            stream = tls_stream
        session = SyncSession(self.replica, self.config.session, self.config.security,
                              dialed=dialed, tls_identity=tls_identity, relay=self.relay)
        link = Link(session, stream, dialed=dialed, addr=addr, config=self.config,
                    stats=self.stats, register=self._register,
                    notify_changed=self._notify_changed)
        self._all_links.add(link)
        if slot is not None:
            self._handshake_slots[link] = slot
        self.stats.connections += 1
        try:
            handshook = await link.run()
        finally:
            session.ended()  # its peer no longer streams here through it (§12)
            self._handshake_slots.pop(link, None)
            self._all_links.discard(link)
            if session.peer_id is not None and self._links.get(session.peer_id) is link:
                del self._links[session.peer_id]
                self.stats.connections_open -= 1
                log.info("disconnected from %s", session.peer_id)
            await _notify_quietly(self)
        return _LinkEnd(session.peer_id, handshook, link.end_reason, session.connected_to_self)

    def _register(self, link: Link) -> bool:
        """Keep one link per peer: of two, the one dialed by the replica with the smaller id
        (both sides decide alike); of two dialed by the same side, the newer."""
        peer = link.session.peer_id
        assert peer is not None  # a session reports HandshakeComplete once it knows the peer
        slot = self._handshake_slots.pop(link, None)
        if slot is not None:  # authenticated: its handshake slot is free for the next one
            self._handshakes.release(slot)
        if peer not in self._links and len(self._links) >= self.config.max_peers:
            log.warning("refusing peer %s: %d peers already", peer, len(self._links))
            self.stats.refused += 1
            link.session.close("too many peers")
            return False
        link.dialer = dialer = self.replica.id if link.dialed else peer
        old = self._links.get(peer)
        if old is not None:
            assert old.dialer is not None  # set when `old` was registered
            if old.dialer != dialer and old.dialer < dialer:
                log.info("duplicate connection with %s: keeping the older", peer)
                link.session.close("duplicate connection")
                return False
            old.session.close("duplicate connection")
            old.poke()
            old.cancel_scope.deadline = trio.current_time() + ERROR_GRACE  # let the ERROR out
            self.stats.connections_open -= 1
        self._links[peer] = link
        self._seen_peers.add(peer)
        self.stats.connections_open += 1
        identity = link.session.peer_identity
        log.info("connected to %s (%s%s)", peer, "dialed" if link.dialed else "accepted",
                 f", identity {identity!r}" if identity is not None else "")
        self._tasks.start_soon(self._notify_changed)
        return True


class _HandshakeSlot:
    """One accepted connection's place among the handshakes in progress."""

    __slots__ = ("address", "held")

    def __init__(self, address: str):
        self.address = address
        self.held = True


class _HandshakeSlots:
    """Accepted connections not yet authenticated, per remote address. Only handshakes count
    here: authenticated peers are counted against max_peers when they complete theirs
    (Node._register), so a flood of connections that never authenticate cannot keep a known
    peer out (specs/security.md §7)."""

    __slots__ = ("_config", "_held")

    def __init__(self, config: NodeConfig):
        self._config = config
        self._held: dict[str, int] = {}

    def refusal(self, address: str) -> str | None:
        """Why a new connection from `address` cannot start a handshake now, or None."""
        if self._held.get(address, 0) >= self._config.max_handshakes_per_address:
            return "too many connections in their handshake from this address"
        if sum(self._held.values()) >= self._config.max_handshakes:
            return "too many connections in their handshake"
        return None

    def take(self, address: str) -> _HandshakeSlot:
        self._held[address] = self._held.get(address, 0) + 1
        return _HandshakeSlot(address)

    def release(self, slot: _HandshakeSlot) -> None:
        """Give a slot back (once: at registration or at the end, whichever is first)."""
        if not slot.held:
            return
        slot.held = False
        n = self._held.get(slot.address, 0) - 1
        if n > 0:
            self._held[slot.address] = n
        else:
            self._held.pop(slot.address, None)


def _caught_up_peers(node: Node) -> set[str]:
    """The peers seen by this Node that hold everything in our log: a linked peer per
    its session, one that left per the replica's record of its acknowledgements."""
    caught_up = set()
    for peer in node._seen_peers:
        link = node._links.get(peer)
        if link is not None:
            if link.session.caught_up:
                caught_up.add(peer)
        elif node.replica.missing_entries(peer) == 0:
            caught_up.add(peer)
    return caught_up

def _lag_report(node: Node, want: int, timeout: float | None) -> str:
    behind = []
    caught_up = _caught_up_peers(node)
    for peer in sorted(node._seen_peers - caught_up):
        missing = node.replica.missing_entries(peer)
        lacks = "a state transfer" if missing is None else f"{missing} log entries"
        linked = "connected" if peer in node._links else "not connected"
        behind.append(f"{peer} ({linked}) lacks {lacks}")
    never = max(0, want - len(node._seen_peers))
    if never:
        behind.append(f"{never} more peer(s) never connected")
    return (f"not caught up within {timeout:g} s: {len(caught_up)} of {want} peer(s) "
            f"hold our whole log; " + "; ".join(behind))



def _remote_address(stream: trio.abc.Stream) -> str:
    """The peer's IP address, for the per-address handshake limit ("" if unknown)."""
    if not isinstance(stream, trio.SocketStream):
        return ""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:  # already reset by the peer
        return ""


class _FailureEpisode:
    """A periodic task of the Node that fails and is retried: logged when it starts failing
    (once, however many ticks fail, unless the cause changes) and when it works again."""

    __slots__ = ("cause", "failures", "since", "what")

    def __init__(self, what: str):
        self.what = what
        self.failures = 0
        self.since = 0.0
        self.cause: str | None = None  # the last cause logged, its numbers left out

    def failed(self, error: StoreError, retry_every: float) -> None:
        if self.failures == 0:
            self.since = trio.current_time()
        self.failures += 1
        cause = _failure_kind(str(error))
        if cause != self.cause:
            self.cause = cause
            log.error("%s failed: %s; serving goes on, retrying every %g s (logged again "
                      "when it works or the cause changes)", self.what, error, retry_every)

    def succeeded(self) -> None:
        if self.failures:
            log.warning("%s works again, after %d failed attempt(s) over %.1f s", self.what,
                        self.failures, trio.current_time() - self.since)
        self.failures, self.cause = 0, None


class _LinkEnd(NamedTuple):
    """How a connection ended, for the dial loop."""

    peer_id: str | None  # the peer's replica id, if its HELLO said
    handshook: bool  # the session's handshake completed
    reason: str | None  # why it ended, if it failed
    to_self: bool  # it reached this very replica


def _failure_kind(reason: str) -> str:
    """A failure reason with its numbers left out: "silent for 20.1 s" and "silent for
    20.3 s" are one kind of failure, logged once."""
    return re.sub(r"\d+(\.\d+)?", "#", reason)


async def _notify_quietly(node: Node) -> None:
    with trio.CancelScope(shield=True):
        await node._notify_changed()


async def _refuse(stream: trio.abc.Stream, reason: str) -> None:
    with trio.move_on_after(1):
        async with stream:
            try:
                await stream.send_all(encode_frame(Error(reason=reason)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
