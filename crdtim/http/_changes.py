"""The change feed, in the manner of CouchDB's `_changes`: the replica's delta log, read
from the client's own position (specs/http.md §5).

Each result is one log entry: its sequence number, where it came from and the conversations
(with the fields and the message ids) it touched, those outside the caller's scope left
out. The feed keeps no copy of the log and no queue per client: every answer, and every
step of an event stream, reads at most `limit` entries after the client's position, so a
slow or vanished client costs a position and a page, never a backlog. When the entries
after the position were trimmed (acknowledged by every peer, or past the retention bound),
or the position is past this log's head (a log of another replica), the feed says `reset`
-- refetch the list -- and goes on from what is left.

Waking: `LogWaiter` is woken by the replica's change events (this process's writes and the
remote deltas its Node applies) and looks at `Replica.head` every `poll_interval` for other
processes' writes (the command line writing to the same directory).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .._cli_common import whole_number
from ..replica import Change, Replica, Subscription
from ._access import Caller
from ._envelope import ApiError, query

__all__ = [
    "DEFAULT_HEARTBEAT_MS",
    "DEFAULT_LONGPOLL_MS",
    "MAX_FEED_LIMIT",
    "MAX_STREAMS",
    "ChangeBatch",
    "LogWaiter",
    "changes",
    "read_changes",
]

DEFAULT_HEARTBEAT_MS = 30_000
MIN_HEARTBEAT_MS, MAX_HEARTBEAT_MS = 100, 600_000
DEFAULT_LONGPOLL_MS = 30_000
MAX_LONGPOLL_MS = 300_000
#: Log entries read per answer (and per step of a stream): the feed's memory per client.
DEFAULT_FEED_LIMIT, MAX_FEED_LIMIT = 100, 1000
#: Event streams open at once; more are refused with 503.
MAX_STREAMS = 256
#: What a browser's EventSource waits before reconnecting (ms), sent at a stream's start.
RETRY_MS = 2000


@dataclass(slots=True)
class ChangeBatch:
    results: list[dict[str, Any]]
    last_seq: int  # the position to continue after
    reset: bool  # entries after the asked position were trimmed, or it is past the head
    has_more: bool  # more entries after last_seq right now
    start: int  # the position read after: the asked one, or where a reset went on from
    log_floor: int = 0

    def as_dict(self, replica_id: str) -> dict[str, Any]:
        d: dict[str, Any] = {"results": self.results, "last_seq": self.last_seq,
                             "has_more": self.has_more, "reset": self.reset,
                             "replica": replica_id}
        if self.reset:
            d["log_floor"] = self.log_floor
        return d


def read_changes(replica: Replica, caller: Caller, since: int, limit: int) -> ChangeBatch:
    """At most `limit` log entries after `since`, as results the caller may see."""
    head = replica.head  # before the entries: a gap found below is then a real one
    reset = since > head
    if reset:
        since = head
    groups: dict[int, dict[str, Any]] = {}
    first = None
    last = since
    for seq, change in replica.changes_since(since, limit):
        if first is None:
            first = seq
        last = seq
        if caller.sees(change.conversation):
            entry = groups.get(seq)
            if entry is None:
                entry = groups[seq] = {"seq": seq, "origin": change.origin,
                                       "peer": change.peer, "conversations": []}
            entry["conversations"].append(
                {"id": change.conversation, "fields": sorted(change.fields),
                 "messages": sorted(change.messages)})
    # Sequence numbers are consecutive and trimming drops a prefix: a hole after `since`
    # means entries were dropped before this client read them.
    if (first is not None and first > since + 1) or (first is None and head > since):
        reset = True
        since = head if first is None else first - 1
        last = max(last, since)
    floor = replica.log_floor if reset else 0
    return ChangeBatch(list(groups.values()), last, reset, last < replica.head, since, floor)


@dataclass
class LogWaiter:
    """Waits for the replica's log to move past a position (one per app, shared by every
    waiting request: nothing per client)."""

    replica: Replica
    poll_interval: float = 0.1
    _event: trio.Event | None = None
    _subscription: Subscription | None = field(default=None, repr=False)
    streams: int = 0  # event streams open now

    def start(self) -> None:
        if self._subscription is None:
            self._subscription = self.replica.subscribe(self._on_change)

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def _on_change(self, change: Change) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait_beyond(self, seq: int, timeout: float) -> bool:
        """True once the log's head is past `seq`; False after `timeout` seconds without."""
        with trio.move_on_after(timeout):
            while self.replica.head <= seq:
                if self._event is None:
                    self._event = trio.Event()
                event = self._event
                with trio.move_on_after(self.poll_interval):  # other processes' writes
                    await event.wait()
            return True
        return False


# -- the route ---------------------------------------------------------------------------------


def _since(text: str) -> int | str:
    return "now" if text == "now" else whole_number(text)


def _feed(text: str) -> str:
    if text not in ("normal", "longpoll", "eventsource"):
        raise ValueError(f"expected normal, longpoll or eventsource, not {text!r:.40}")
    return text


def _ms(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        n = whole_number(text)
        if not low <= n <= high:
            raise ValueError(f"expected milliseconds from {low} to {high}, not {n}")
        return n
    return parse


def _limit(text: str) -> int:
    n = whole_number(text)
    if not 1 <= n <= MAX_FEED_LIMIT:
        raise ValueError(f"expected a number of entries from 1 to {MAX_FEED_LIMIT}, not {n}")
    return n


CHANGES_QUERY = {
    "since": _since,
    "feed": _feed,
    "heartbeat": _ms(MIN_HEARTBEAT_MS, MAX_HEARTBEAT_MS),
    "timeout": _ms(0, MAX_LONGPOLL_MS),
    "limit": _limit,
}


async def changes(replica: Replica, caller: Caller, request: Request) -> dict[str, Any] | Response:
    params = query(request, CHANGES_QUERY)
    feed = params.get("feed", "normal")
    limit = params.get("limit", DEFAULT_FEED_LIMIT)
    since = params.get("since", 0)
    resume = request.headers.get("last-event-id")
    if resume is not None and feed == "eventsource":
        try:
            since = whole_number(resume.strip())
        except argparse.ArgumentTypeError as e:
            raise ApiError(400, f"Last-Event-ID: {e}") from None
    if since == "now":
        since = replica.head
    waiter: LogWaiter = request.app.state.log_waiter
    if feed == "eventsource":
        if waiter.streams >= MAX_STREAMS:
            raise ApiError(503, f"{MAX_STREAMS} event streams are open: try again later",
                           {"Retry-After": "5"})
        heartbeat = params.get("heartbeat", DEFAULT_HEARTBEAT_MS) / 1000
        return StreamingResponse(
            _event_stream(replica, caller, waiter, since, limit, heartbeat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    batch = read_changes(replica, caller, since, limit)
    if feed == "longpoll":
        deadline = trio.current_time() + params.get("timeout", DEFAULT_LONGPOLL_MS) / 1000
        while not batch.results and not batch.reset:
            remaining = deadline - trio.current_time()
            if remaining <= 0 or not await waiter.wait_beyond(batch.last_seq, remaining):
                break
            batch = read_changes(replica, caller, batch.last_seq, limit)
    return batch.as_dict(replica.id)


def _event(kind: str, seq: int, data: dict[str, Any]) -> str:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _event_stream(replica: Replica, caller: Caller, waiter: LogWaiter, since: int,
                        limit: int, heartbeat: float) -> AsyncIterator[str]:
    """Server-Sent Events: `change` per log entry (id = its sequence number), `reset` when
    entries were trimmed, a comment line after `heartbeat` seconds of silence. Holds one
    page of the log at most; the server's send waits for a slow client's socket."""
    waiter.streams += 1
    try:
        yield f"retry: {RETRY_MS}\n: crdtim change feed of replica {replica.id}\n\n"
        position = since
        quiet_since = trio.current_time()
        while True:
            batch = read_changes(replica, caller, position, limit)
            if batch.reset:
                yield _event("reset", batch.start, {"reset": True, "log_floor": batch.log_floor,
                                                    "replica": replica.id})
                quiet_since = trio.current_time()
            for result in batch.results:
                yield _event("change", result["seq"], result)
                quiet_since = trio.current_time()
            position = batch.last_seq
            if batch.has_more:
                await trio.lowlevel.checkpoint()
                continue
            left = quiet_since + heartbeat - trio.current_time()
            if not await waiter.wait_beyond(position, max(left, 0.0)):
                yield ": heartbeat\n\n"  # a comment line: keeps proxies and clients sure
                quiet_since = trio.current_time()
    finally:
        waiter.streams -= 1
