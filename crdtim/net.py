"""trio transport for sync sessions: serve, dial peers, move bytes; no CRDT or storage logic.

A `Node` runs a replica's replication: it listens, dials its peers (exponential backoff with
full jitter), and runs one `protocol.SyncSession` per connection with one receiver task and
one sender task. The sender is the only writer to its stream; it sleeps until woken by a local
commit (after a short linger, to batch), by a remote delta that may need forwarding, by an
ACK that opened the window, or by a heartbeat deadline. Writes made to the same directory by
other processes are noticed by polling the log head. Back-pressure: a session keeps at most
`max_unacked_frames` frames in flight and `send_all` blocks on a full socket, so nothing is
buffered without bound.

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
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import trio

from .protocol import (
    DeltaApplied,
    HandshakeComplete,
    PeerAcked,
    PeerClosed,
    RemoteProtocolError,
    SecurityConfig,
    SessionConfig,
    StateTransferFinished,
    StateTransferStarted,
    SyncSession,
)
from .replica import Change, Replica, Subscription
from .security import TlsConfig, certificate_identity

__all__ = ["Node", "NodeConfig", "parse_address"]

log = logging.getLogger("crdtim.net")

#: Seconds a closing connection gets to deliver its ERROR frame before it is cut anyway (the
#: peer may not be reading at all).
ERROR_GRACE = 1.0
#: accept() errors that mean "out of resources for now": wait and accept again.
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_RETRY_DELAY = 0.1  # seconds


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[v6]:PORT' -> (host, port); ValueError naming the problem."""
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
    max_peers: int = 64  # connections at once; more are refused
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
    refused: int = 0  # connections refused over max_peers


class _Link:
    """One live connection: its session and the event that wakes its sender."""

    def __init__(self, session: SyncSession, dialer: str | None, stream: trio.abc.Stream):
        self.session = session
        self.dialer = dialer  # replica id of the side that dialed (known after the handshake)
        self.stream = stream
        self.wake = trio.Event()
        # The sender task and the receiver task (for an ERROR) both write: one at a time, or
        # trio raises BusyResourceError, and in order.
        self.send_lock = trio.Lock()
        self.cancel_scope = trio.CancelScope()
        self.peer_addr: tuple[str, int] | None = None

    def poke(self) -> None:
        self.wake.set()


class Node:
    """Replicates `replica` with its peers while the `async with` block runs.

    >>> async with Node(replica, listen=("127.0.0.1", 0), peers=[("127.0.0.1", 7001)]) as node:
    ...     await node.wait_caught_up()
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
        self._tls_handshakes = 0  # accepted connections still in their TLS handshake
        self._links: dict[str, _Link] = {}  # peer replica id -> the link kept for it
        self._all_links: set[_Link] = set()
        self._changed = trio.Condition()
        self._cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._subscription: Subscription | None = None
        self._known_head = 0
        self._last_housekeeping = -math.inf
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

    async def wait_caught_up(self, n: int | None = None) -> None:
        """Until at least `n` peers (default: every configured peer) are connected and have
        acknowledged everything in our log."""
        want = len(self.peers) if n is None else n
        async with self._changed:
            while True:
                self._notice_foreign_writes()
                links = list(self._links.values())
                if len(links) >= want and all(link.session.caught_up for link in links):
                    return
                await self._changed.wait()

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- waking senders ----------------------------------------------------------------------------

    def _on_replica_change(self, change: Change) -> None:
        for link in list(self._links.values()):
            if change.peer != link.session.peer_id:
                link.poke()

    def _notice_foreign_writes(self) -> None:
        head = self.replica.head
        if head != self._known_head:
            self._known_head = head
            for link in list(self._links.values()):
                link.poke()

    async def _watch_log(self) -> None:
        while True:
            await trio.sleep(self.config.poll_interval)
            self._notice_foreign_writes()
            now = trio.current_time()
            if now - self._last_housekeeping >= self.config.trim_interval:
                self._last_housekeeping = now
                # In the replica's own thread; the snapshot is for the metrics thread.
                self.status_snapshot = self.replica.housekeeping()

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
                if len(self._all_links) + self._tls_handshakes >= self.config.max_peers:
                    log.warning("refusing a connection: %d peers already", len(self._all_links))
                    self.stats.refused += 1
                    if self.config.tls is None:
                        self._tasks.start_soon(_refuse, stream, "too many peers")
                    else:  # before TLS, an ERROR frame would only be garbage to the peer
                        await trio.aclose_forcefully(stream)
                    continue
                self._tasks.start_soon(self._run_link, stream, False, None)

    async def _dial_loop(self, addr: tuple[str, int]) -> None:
        delay = self.config.backoff_initial
        peer_id: str | None = None
        failing = False
        while True:
            while peer_id is not None and peer_id in self._links:
                async with self._changed:  # connected (maybe by the peer dialing us): wait
                    await self._changed.wait()
            try:
                stream = await trio.open_tcp_stream(*addr)
            except OSError as e:
                # Say so once per outage (a mistyped or down peer must not be silent), then
                # keep retrying quietly.
                (log.warning if not failing else log.debug)(
                    "cannot reach peer %s:%d: %s (retrying)", *addr, e.strerror or e)
                failing = True
            else:
                failing = False
                started = trio.current_time()
                peer_id, handshook = await self._run_link(stream, True, addr)
                # Start again from a short delay only after a link that worked for a while:
                # a peer that accepts and then refuses us (say, a schema it cannot read)
                # must not be redialed in a tight loop.
                if handshook and trio.current_time() - started >= self.config.backoff_max:
                    delay = self.config.backoff_initial
            # Full jitter (AWS architecture blog, "Exponential Backoff And Jitter").
            await trio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, self.config.backoff_max)

    async def _tls_handshake(self, stream: trio.abc.Stream, dialed: bool,
                             addr: tuple[str, int] | None
                             ) -> tuple[trio.SSLStream[trio.abc.Stream] | None, str | None]:
        """Wrap `stream` in mutual TLS; (the TLS stream, the peer certificate's identity), or
        (None, None) when the handshake fails or takes over `handshake_timeout`."""
        tls = self.config.tls
        assert tls is not None
        tls_stream = trio.SSLStream(stream, tls.client if dialed else tls.server,
                                    server_side=not dialed,
                                    server_hostname=addr[0] if dialed and addr else None)
        if not dialed:
            self._tls_handshakes += 1
        try:
            with trio.move_on_after(self.config.session.handshake_timeout):
                await tls_stream.do_handshake()
                return tls_stream, certificate_identity(tls_stream.getpeercert())
            reason = f"not done within {self.config.session.handshake_timeout:g} s"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            reason = str(e.__cause__ or e)  # trio wraps the ssl.SSLError
        finally:
            if not dialed:
                self._tls_handshakes -= 1
        self.stats.tls_failures += 1
        log.warning("TLS handshake with %s failed: %s", _where(stream, addr), reason)
        await trio.aclose_forcefully(stream)
        await _notify_quietly(self)  # (stats changed: tests and status wait on this)
        return None, None

    async def _run_link(self, stream: trio.abc.Stream, dialed: bool,
                        addr: tuple[str, int] | None) -> tuple[str | None, bool]:
        tls_identity = None
        if self.config.tls is not None:
            tls_stream, tls_identity = await self._tls_handshake(stream, dialed, addr)
            if tls_stream is None:
                return None, False
            stream = tls_stream
        session = SyncSession(self.replica, self.config.session, self.config.security,
                              dialed=dialed, tls_identity=tls_identity)
        link = _Link(session, None, stream)
        link.peer_addr = addr
        self._all_links.add(link)
        self.stats.connections += 1
        handshook = False
        try:
            async with _closing(stream):
                session.initiate(trio.current_time())
                await self._flush(link)
                with link.cancel_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._send_loop, link)
                        handshook = await self._receive_loop(link, dialed)
                        nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            # except*: raised in the link's nursery, these arrive wrapped in an ExceptionGroup
            # (trio's strict exception groups); a lost connection must not end the node.
            log.info("connection to %s lost: %s", session.peer_id or addr or "peer",
                     group.exceptions[0])
        except* Exception as group:
            # A bug met on one link (ours, or a case nobody foresaw) ends that link, not the
            # node and every other peer's link with it.
            log.error("link to %s failed", session.peer_id or addr or "peer",
                      exc_info=group.exceptions[0])
            self.stats.errors += 1
        finally:
            self._all_links.discard(link)
            if session.peer_id is not None and self._links.get(session.peer_id) is link:
                del self._links[session.peer_id]
                self.stats.connections_open -= 1
                log.info("disconnected from %s", session.peer_id)
            await _notify_quietly(self)
        return session.peer_id, handshook

    async def _receive_loop(self, link: _Link, dialed: bool) -> bool:
        session = link.session
        handshook = False
        while True:
            cfg = self.config.session
            timeout = cfg.idle_timeout if handshook else cfg.handshake_timeout
            data: bytes | None = None
            with trio.move_on_after(timeout) as scope:
                # bytes() of a bytes object is that object: no copy (trio's streams return
                # bytes; the abstract type also allows a bytearray).
                data = bytes(await link.stream.receive_some(self.config.receive_size))
            now = trio.current_time()
            if scope.cancelled_caught:
                data = None
            elif not data:
                log.info("peer %s closed the connection", session.peer_id or "?")
                return handshook
            refused = None
            try:
                if data is None:
                    session.tick(now)
                    continue
                self.stats.bytes_received += len(data)
                events = session.receive_data(data, now)
                session.tick(now)  # a peer trickling bytes still meets the handshake deadline
            except RemoteProtocolError as e:
                refused, events = e, e.events  # frames before the bad one were applied
            if refused is not None:
                self.stats.errors += 1
                log.warning("peer %s: %s; closing", session.peer_id or "?", refused.reason)
                self._count(events)
                with trio.move_on_after(ERROR_GRACE):  # the sender may be stuck in send_all
                    await self._flush(link)
                return handshook or any(isinstance(e, HandshakeComplete) for e in events)
            self._count(events)
            for event in events:
                if isinstance(event, HandshakeComplete):
                    handshook = True
                    if not self._register(link, dialed):
                        with trio.move_on_after(ERROR_GRACE):
                            await self._flush(link)
                        return handshook
                elif isinstance(event, StateTransferStarted):
                    log.info("state transfer %s %s", "to" if event.outbound else "from",
                             session.peer_id)
                    if event.outbound:
                        self.stats.state_transfers_sent += 1
                    else:
                        self.stats.state_transfers_received += 1
                elif isinstance(event, PeerClosed):
                    # %r: the reason is the peer's text; its newlines must not forge log lines
                    log.warning("peer %s closed with error: %r", session.peer_id or "?",
                                event.reason)
                    return handshook
            link.poke()
            if session.output_backlog > self.config.session.max_output_backlog:
                # The peer sends faster than it reads what we owe it (PONGs, ACKs): stop
                # reading until that is sent, rather than buffer without bound.
                await self._flush(link)
            if any(isinstance(e, (PeerAcked, StateTransferFinished)) for e in events):
                await self._notify_changed()

    def _count(self, events: Iterable[object]) -> None:
        for event in events:
            if isinstance(event, DeltaApplied):
                self.stats.deltas_received += 1
                self.stats.conversations_changed += len(event.changed)

    def _register(self, link: _Link, dialed: bool) -> bool:
        """Keep one link per peer: of two, the one dialed by the replica with the smaller id
        (both sides decide alike); of two dialed by the same side, the newer."""
        peer = link.session.peer_id
        assert peer is not None  # a session reports HandshakeComplete once it knows the peer
        link.dialer = dialer = self.replica.id if dialed else peer
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
        self.stats.connections_open += 1
        identity = link.session.peer_identity
        log.info("connected to %s (%s%s)", peer, "dialed" if dialed else "accepted",
                 f", identity {identity!r}" if identity is not None else "")
        self._tasks.start_soon(self._notify_changed)
        return True

    async def _send_loop(self, link: _Link) -> None:
        session = link.session
        cfg = self.config
        while True:
            with trio.move_on_after(cfg.session.ping_interval):
                await link.wake.wait()
            link.wake = trio.Event()
            if cfg.linger and session.unacked_frames >= cfg.session.max_unacked_frames // 2:
                # Half the window is in flight, so the link is busy: wait a moment for more
                # writes to join this DELTA. A lightly used link sends at once (latency); one
                # frame in flight is the common case for a single write and its echo.
                await trio.sleep(cfg.linger)
            self.stats.deltas_sent += session.pump()
            try:
                session.tick(trio.current_time())
            except RemoteProtocolError as e:
                log.warning("peer %s: %s; closing", session.peer_id, e.reason)
                with trio.move_on_after(ERROR_GRACE):
                    await self._flush(link)
                link.cancel_scope.cancel()
                return
            await self._flush(link)
            if session.state.value == "closed":
                # The receiver may have closed the session while we were sending: its ERROR
                # frame is queued (or being sent by it); let it out before cutting the link.
                with trio.move_on_after(ERROR_GRACE):
                    await self._flush(link)
                link.cancel_scope.cancel()
                return

    async def _flush(self, link: _Link) -> None:
        async with link.send_lock:  # take the bytes under the lock too: they go out in order
            data = link.session.data_to_send()
            if data:
                self.stats.bytes_sent += len(data)
                await link.stream.send_all(data)
                link.session.sent_at(trio.current_time())


class _closing:
    """`async with stream`, but a TLS close_notify to a peer that does not read cannot hold
    the link open: closing gets ERROR_GRACE, then the socket is closed anyway (trio closes
    a resource whose aclose is cancelled)."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream

    async def __aenter__(self) -> trio.abc.Stream:
        return self.stream

    async def __aexit__(self, *exc: Any) -> None:
        with trio.move_on_after(ERROR_GRACE):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


def _where(stream: trio.abc.Stream, addr: tuple[str, int] | None) -> str:
    if addr is not None:
        return f"{addr[0]}:{addr[1]}"
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return "a peer"
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "a peer"
    return f"{host}:{port}"


async def _notify_quietly(node: Node) -> None:
    with trio.CancelScope(shield=True):
        await node._notify_changed()


async def _refuse(stream: trio.abc.Stream, reason: str) -> None:
    from .protocol import Error, encode_frame

    with trio.move_on_after(1):
        async with stream:
            try:
                await stream.send_all(encode_frame(Error(reason=reason)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
