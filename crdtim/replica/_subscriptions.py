"""Change events: what a replica tells its subscribers after each commit of this process.

A subscriber gets a `Change` per conversation per committed transaction, through a
synchronous callback or a trio memory channel. This is the replica's only use of trio, and
trio is imported only when a channel is asked for: an app that embeds a replica with
callbacks (or none) never loads it. Delivery must never fail or block the write that caused
it: the write is committed already.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

__all__ = ["MESSAGES", "Change", "ChangeFeed", "Changed", "Subscription", "changed"]

log = logging.getLogger("crdtim.replica")


#: The conversation field that holds a delta's message history (specs/crdt.md §7).
MESSAGES = "messages"


@dataclass(frozen=True, slots=True)
class Change:
    """One conversation changed, in one committed transaction."""

    conversation: str
    fields: frozenset[str]  # "messages" among them when messages changed
    origin: str  # "local" or "remote"
    peer: str | None = None  # for remote changes, the replica the delta came from, if known
    #: the messages whose record changed, and those a version choice now names
    messages: frozenset[str] = frozenset()


#: What a transaction changed in one conversation: (id, fields, message ids).
Changed = tuple[str, frozenset[str], frozenset[str]]


def changed(cid: str, fields: dict[str, Any]) -> Changed:
    history = fields.get(MESSAGES)
    if history is None:
        return cid, frozenset(fields), frozenset()
    ids = set(history.messages)
    ids.update(c.value for c in history.choices.values())
    return cid, frozenset(fields), frozenset(ids)


class Subscription:
    """Change events for one subscriber: a callback, or a trio channel to iterate.

    `async for change in sub` works when no callback was given. If the consumer falls more
    than `max_buffer` events behind, further events are dropped and counted in `dropped`
    rather than growing memory without bound; re-read with get()/list() after a drop.
    """

    def __init__(self, feed: ChangeFeed, callback: Callable[[Change], Any] | None,
                 max_buffer: int):
        self._feed = feed
        self.callback = callback
        self.dropped = 0
        self._send: trio.MemorySendChannel[Change] | None = None
        self.receive_channel: trio.MemoryReceiveChannel[Change] | None = None
        if callback is None:
            import trio  # only here: a replica with callbacks alone never needs trio

            self._send, self.receive_channel = trio.open_memory_channel[Change](max_buffer)

    def _deliver(self, change: Change) -> None:
        if self.callback is not None:
            self.callback(change)
            return
        if self._send is None:  # closed
            return
        import trio  # loaded already: this subscription made a trio channel

        try:
            self._send.send_nowait(change)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.close()

    def close(self) -> None:
        self._feed.discard(self)
        if self._send is not None:
            self._send.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Change]:
        if self.receive_channel is None:
            raise TypeError("this subscription delivers to a callback")
        return self.receive_channel.__aiter__()


class ChangeFeed:
    """The subscriptions of one replica, and the delivery of each commit's changes to them."""

    __slots__ = ("_subscriptions",)

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, callback: Callable[[Change], Any] | None,
                  max_buffer: int) -> Subscription:
        sub = Subscription(self, callback, max_buffer)
        self._subscriptions.add(sub)
        return sub

    def discard(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def close_all(self) -> None:
        for sub in list(self._subscriptions):
            sub.close()

    def notify(self, changes: list[Changed], origin: str, peer: str | None) -> None:
        if not self._subscriptions:
            return
        for cid, fields, messages in changes:
            change = Change(cid, fields, origin, peer, messages)
            for sub in list(self._subscriptions):
                try:
                    sub._deliver(change)
                except Exception:
                    # The write is committed: a subscriber's bug must not make it look
                    # failed to the caller, nor end a Node that applied a remote delta.
                    log.exception("change subscriber failed on %s", change)
