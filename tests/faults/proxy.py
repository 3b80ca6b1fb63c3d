"""A fault-injecting TCP proxy (trio): every link between two servers goes through it.

One `Link` per ordered pair (dialer, target): it listens on its own loopback port (the
dialer's `--peer`) and forwards each accepted connection to the target's real address. The
harness then injects faults by link or by set of servers:
- cut: close every connection on the link at once (bytes in flight are lost: that is how
  message loss shows to a TCP peer);
- delay: hold each chunk for a random time before forwarding it (order within a connection
  is kept, as TCP keeps it);
- partition: links across the cut drop their connections and refuse new ones until healed;
- heal: no delay, no partition.
No CRDT logic here: it only moves bytes (the harness counts the faults it asks for).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio

__all__ = ["Proxy", "Link"]


@dataclass
class Link:
    dialer: int
    target: int
    target_addr: tuple[str, int]
    listener: trio.SocketListener | None = None
    delay: float = 0.0  # max seconds each chunk is held
    blocked: bool = False
    scopes: set[trio.CancelScope] = field(default_factory=set)

    @property
    def port(self) -> int:
        return self.listener.socket.getsockname()[1]


class Proxy:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.links: dict[tuple[int, int], Link] = {}
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery, targets: dict[int, tuple[str, int]]) -> None:
        """A link for every ordered pair of `targets` (server index -> its real address)."""
        self._nursery = nursery
        for i in targets:
            for j, addr in targets.items():
                if i == j:
                    continue
                link = Link(i, j, addr)
                (link.listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
                self.links[(i, j)] = link
                nursery.start_soon(self._accept_loop, link)

    def peer_addresses(self, dialer: int) -> list[str]:
        """The `--peer` arguments of server `dialer`."""
        return [f"127.0.0.1:{l.port}" for (i, _), l in sorted(self.links.items()) if i == dialer]

    # -- faults ----------------------------------------------------------------------------

    def cut(self, link: Link) -> None:
        for scope in list(link.scopes):
            scope.cancel()

    def cut_random(self) -> None:
        self.cut(self.rng.choice(list(self.links.values())))

    def set_delay(self, seconds: float) -> None:
        for link in self.links.values():
            link.delay = seconds

    def partition(self, side: set[int]) -> None:
        for link in self.links.values():
            if (link.dialer in side) != (link.target in side):
                link.blocked = True
                for scope in list(link.scopes):
                    scope.cancel()

    def heal(self) -> None:
        for link in self.links.values():
            link.blocked = False
            link.delay = 0.0

    # -- forwarding ------------------------------------------------------------------------

    async def _accept_loop(self, link: Link) -> None:
        async with link.listener:
            while True:
                stream = await link.listener.accept()
                if link.blocked:
                    await stream.aclose()
                    continue
                self._nursery.start_soon(self._serve, link, stream)

    async def _serve(self, link: Link, client: trio.SocketStream) -> None:
        scope = trio.CancelScope()
        link.scopes.add(scope)
        try:
            with scope:
                try:
                    server = await trio.open_tcp_stream(*link.target_addr)
                except OSError:
                    return  # the target is down (killed): the dialer retries
                async with server:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pipe, link, client, server, nursery.cancel_scope)
                        nursery.start_soon(self._pipe, link, server, client, nursery.cancel_scope)
        finally:
            link.scopes.discard(scope)
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def _pipe(self, link: Link, src: trio.SocketStream, dst: trio.SocketStream,
                    both: trio.CancelScope) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                if link.delay:
                    await trio.sleep(self.rng.uniform(0, link.delay))
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        both.cancel()  # one direction ended: the connection is gone both ways
