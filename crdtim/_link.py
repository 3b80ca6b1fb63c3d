"""One connection's life: TLS, then a sync session driven by a receiver and a sender task.

A `Link` moves bytes between one trio stream and one `protocol.SyncSession` (specs/protocol.md
§9): the receiver task feeds what arrives to the session and enforces its deadlines, the
sender task writes what the session owes, and the two never write at once. It must never
hold CRDT or storage logic (that is the session's and the replica's), nor decide which links
a node keeps: it reports a completed handshake to its owner, which answers keep or close.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from .errors import StoreError
from .protocol import (
    DeltaApplied,
    HandshakeComplete,
    PeerAcked,
    PeerClosed,
    RemoteProtocolError,
    StateTransferFinished,
    StateTransferStarted,
    SyncSession,
)
from .security import TlsConfig, certificate_identity

if TYPE_CHECKING:
    from .net import NodeConfig, NodeStats

log = logging.getLogger("crdtim.net")

#: Seconds a closing connection gets to deliver its ERROR frame before it is cut anyway (the
#: peer may not be reading at all).
ERROR_GRACE = 1.0


class Link:
    """One live connection: its session, its stream and the event that wakes its sender.

    `register(link)` is called once the session's handshake completes; False closes the link
    (specs/protocol.md §9, duplicate connections). `notify_changed()` tells waiters that an
    ACK or a finished state transfer moved the link forward.
    """

    def __init__(self, session: SyncSession, stream: trio.abc.Stream, *, dialed: bool,
                 addr: tuple[str, int] | None, config: NodeConfig, stats: NodeStats,
                 register: Callable[[Link], bool],
                 notify_changed: Callable[[], Awaitable[None]]):
        self.session = session
        self.dialed = dialed
        self.dialer: str | None = None  # replica id of the side that dialed (after handshake)
        self.stream = stream
        self.wake = trio.Event()
        # The sender task and the receiver task (for an ERROR) both write: one at a time, or
        # trio raises BusyResourceError, and in order.
        self.send_lock = trio.Lock()
        self.cancel_scope = trio.CancelScope()
        self.peer_addr = addr
        self._config = config
        self._stats = stats
        self._register = register
        self._notify_changed = notify_changed
        self.handshook = False  # the session's handshake completed
        #: Why the link ended (a refusal, the peer's ERROR, a lost connection), for the
        #: dialing Node, which logs a failing peer once per change (specs/protocol.md §9).
        self.end_reason: str | None = None

    def _ended(self, reason: str, level: int, message: str, *args: object) -> None:
        self.end_reason = reason
        if (self.dialed and not self.handshook) or self.session.connected_to_self:
            # A dialed link that never got going is reported by the dial loop, once per
            # kind of failure, not once per retry; a connection to ourselves likewise.
            level = logging.DEBUG
        log.log(level, message, *args)

    def poke(self) -> None:
        self.wake.set()

    async def run(self) -> bool:
        """Until the connection ends (the stream is closed on return); whether the session's
        handshake completed. A lost connection, or a bug met on this link, ends the link
        only: it is logged, never raised."""
        session = self.session
        try:
            async with _closing(self.stream):
                session.initiate(trio.current_time())
                await self.flush()
                with self.cancel_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._send_loop)
                        await self._receive_loop()
                        nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            # except*: raised in the link's nursery, these arrive wrapped in an ExceptionGroup
            # (trio's strict exception groups); a lost connection must not end the node.
            self._ended(f"connection lost: {group.exceptions[0]}", logging.INFO,
                        "connection to %s lost: %s",
                        session.peer_id or self.peer_addr or "peer", group.exceptions[0])
        except* StoreError as group:
            # The disk (full, failing) or a damaged record, not a bug: one line, no traceback
            # (specs/storage.md §6); the node keeps serving its other links and its reads.
            self._ended(f"stopped: {group.exceptions[0]}", logging.ERROR,
                        "link to %s stopped: %s",
                        session.peer_id or self.peer_addr or "peer", group.exceptions[0])
            self._stats.errors += 1
        except* Exception as group:
            # A bug met on one link (ours, or a case nobody foresaw) ends that link, not the
            # node and every other peer's link with it.
            log.error("link to %s failed", session.peer_id or self.peer_addr or "peer",
                      exc_info=group.exceptions[0])
            self.end_reason = f"failed: {group.exceptions[0]!r}"
            self._stats.errors += 1
        return self.handshook

    async def _receive_loop(self) -> bool:
        session = self.session
        while True:
            cfg = self._config.session
            timeout = cfg.idle_timeout if self.handshook else cfg.handshake_timeout
            data: bytes | None = None
            with trio.move_on_after(timeout) as scope:
                # bytes() of a bytes object is that object: no copy (trio's streams return
                # bytes; the abstract type also allows a bytearray).
                data = bytes(await self.stream.receive_some(self._config.receive_size))
            now = trio.current_time()
            if scope.cancelled_caught:
                data = None
            elif not data:
                self._ended("closed the connection", logging.INFO,
                            "peer %s closed the connection", session.peer_id or "?")
                return self.handshook
            refused = None
            try:
                if data is None:
                    session.tick(now)
                    continue
                self._stats.bytes_received += len(data)
                events = session.receive_data(data, now)
                session.tick(now)  # a peer trickling bytes still meets the handshake deadline
            except RemoteProtocolError as e:
                refused, events = e, e.events  # frames before the bad one were applied
            if refused is not None:
                self._stats.errors += 1
                self.handshook = self.handshook or any(
                    isinstance(e, HandshakeComplete) for e in events)
                self._ended(refused.reason, logging.WARNING, "peer %s: %s; closing",
                            session.peer_id or "?", refused.reason)
                self._count(events)
                with trio.move_on_after(ERROR_GRACE):  # the sender may be stuck in send_all
                    await self.flush()
                return self.handshook
            self._count(events)
            for event in events:
                if isinstance(event, HandshakeComplete):
                    self.handshook = True
                    if not self._register(self):
                        with trio.move_on_after(ERROR_GRACE):
                            await self.flush()
                        return self.handshook
                elif isinstance(event, StateTransferStarted):
                    log.info("state transfer %s %s", "to" if event.outbound else "from",
                             session.peer_id)
                    if event.outbound:
                        self._stats.state_transfers_sent += 1
                    else:
                        self._stats.state_transfers_received += 1
                elif isinstance(event, PeerClosed):
                    # %r: the reason is the peer's text; its newlines must not forge log lines
                    self._ended(f"closed with error: {event.reason!r}", logging.WARNING,
                                "peer %s closed with error: %r", session.peer_id or "?",
                                event.reason)
                    return self.handshook
            self.poke()
            if session.output_backlog > self._config.session.max_output_backlog:
                # The peer sends faster than it reads what we owe it (PONGs, ACKs): stop
                # reading until that is sent, rather than buffer without bound.
                await self.flush()
            if any(isinstance(e, (PeerAcked, StateTransferFinished)) for e in events):
                await self._notify_changed()

    def _count(self, events: Iterable[object]) -> None:
        for event in events:
            if isinstance(event, DeltaApplied):
                self._stats.deltas_received += 1
                self._stats.conversations_changed += len(event.changed)

    async def _send_loop(self) -> None:
        session = self.session
        cfg = self._config
        while True:
            with trio.move_on_after(cfg.session.ping_interval):
                await self.wake.wait()
            self.wake = trio.Event()
            if cfg.linger and session.unacked_frames >= cfg.session.max_unacked_frames // 2:
                # Half the window is in flight, so the link is busy: wait a moment for more
                # writes to join this DELTA. A lightly used link sends at once (latency); one
                # frame in flight is the common case for a single write and its echo.
                await trio.sleep(cfg.linger)
            self._stats.deltas_sent += session.pump()
            try:
                session.tick(trio.current_time())
            except RemoteProtocolError as e:
                self._ended(e.reason, logging.WARNING, "peer %s: %s; closing",
                            session.peer_id, e.reason)
                with trio.move_on_after(ERROR_GRACE):
                    await self.flush()
                self.cancel_scope.cancel()
                return
            await self.flush()
            if session.state.value == "closed":
                # The receiver may have closed the session while we were sending: its ERROR
                # frame is queued (or being sent by it); let it out before cutting the link.
                with trio.move_on_after(ERROR_GRACE):
                    await self.flush()
                self.cancel_scope.cancel()
                return

    async def flush(self) -> None:
        async with self.send_lock:  # take the bytes under the lock too: they go out in order
            data = self.session.data_to_send()
            if data:
                self._stats.bytes_sent += len(data)
                await self.stream.send_all(data)
                self.session.sent_at(trio.current_time())


async def tls_handshake(stream: trio.abc.Stream, tls: TlsConfig, timeout: float, *,
                        dialed: bool, addr: tuple[str, int] | None
                        ) -> tuple[trio.SSLStream[trio.abc.Stream] | None, str | None, str]:
    """Wrap `stream` in mutual TLS; (the TLS stream, the peer certificate's identity, ""),
    or (None, None, why) when the handshake fails or takes over `timeout` seconds: then
    `stream` is closed, and the failure logged (for a dialed stream at debug level only:
    the dial loop reports a failing peer once per change, specs/protocol.md §9)."""
    tls_stream = trio.SSLStream(stream, tls.client if dialed else tls.server,
                                server_side=not dialed,
                                server_hostname=addr[0] if dialed and addr else None)
    try:
        with trio.move_on_after(timeout):
            await tls_stream.do_handshake()
            return tls_stream, certificate_identity(tls_stream.getpeercert()), ""
        reason = f"not done within {timeout:g} s"
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        reason = str(e.__cause__ or e)  # trio wraps the ssl.SSLError
    log.log(logging.DEBUG if dialed else logging.WARNING, "TLS handshake with %s failed: %s",
            _where(stream, addr), reason)
    await trio.aclose_forcefully(stream)
    return None, None, f"TLS handshake failed: {reason}"


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
