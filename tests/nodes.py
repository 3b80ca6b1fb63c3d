"""Waiting on Nodes over loopback without sleeping (shared by the node tests; imported as a
top-level module, like `strategies`)."""

from __future__ import annotations

from typing import Callable

import trio

from crdtim.net import Node, NodeConfig

FAST = NodeConfig(poll_interval=0.01, linger=0)
GUARD = 10  # seconds: only a guard against a hang; each test takes far less
LOCAL = "127.0.0.1"


async def settle(*nodes: tuple[Node, int]) -> None:
    """Until each (node, links) has `links` peers connected and caught up, and no replica's
    log grew while we checked."""
    with trio.fail_after(GUARD):
        while True:
            heads = [n.replica.head for n, _ in nodes]
            for n, links in nodes:
                await n.wait_caught_up(links)
            if heads == [n.replica.head for n, _ in nodes]:
                return


async def wait_until(node: Node, predicate: Callable[[], bool]) -> None:
    """Until `predicate()` holds, re-checked whenever the node's links change."""
    with trio.fail_after(GUARD):
        async with node._changed:
            while not predicate():
                await node._changed.wait()


async def read_to_eof(stream: trio.abc.Stream, guard: float = GUARD) -> bytes:
    """Everything the peer sends until it closes the connection."""
    data = bytearray()
    with trio.fail_after(guard):
        try:
            while chunk := await stream.receive_some(1 << 16):
                data += chunk
        except trio.BrokenResourceError:
            pass  # a reset after the ERROR: what was read still counts
    return bytes(data)
