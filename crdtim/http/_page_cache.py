"""Answers of `GET /api/im/conversations` kept while the replica's log head stands still.

Every change of state is one delta-log entry (specs/http.md §5): this process's writes,
remote deltas, other processes' writes and held values joined when their time comes. So
while `Replica.head` has not moved, a list page asked for with the same query by a caller
with the same scope is the same page, and its encoded answer can be sent again without
reading the store or encoding JSON; the first request after any write rebuilds it. The one
part of a page that time alone changes is a mute with an end time (`muted` turns false when
it passes), so a page holding a timed mute still in force is never kept. The head is read
before the page: a write in between leaves an entry under the older head, which the next
request no longer matches. Bounded: `MAX_ENTRIES` answers, all dropped when the head moves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import Response

from ..replica import Replica
from ._access import Caller
from ._envelope import envelope

__all__ = ["MAX_ENTRIES", "PageCache"]

#: Answers kept at once (distinct query strings and scopes at one head).
MAX_ENTRIES = 64

Key = tuple[bytes, tuple[str, ...] | None]


class PageCache:
    """One per app; `answer` gives the cached response or builds (and maybe keeps) it."""

    def __init__(self, replica: Replica):
        self._replica = replica
        self._head = -1
        self._answers: dict[Key, bytes] = {}
        self.hits = 0

    def answer(self, caller: Caller, query_string: bytes,
               build: Callable[[], dict[str, Any]]) -> Response:
        head = self._replica.head  # before the page: see the module's comment
        if head != self._head:
            self._answers.clear()
            self._head = head
        key = (query_string, caller.scope)
        body = self._answers.get(key)
        if body is not None:
            self.hits += 1
            return Response(body, media_type="application/json")
        data = build()
        response = envelope(data)
        if not _timed_mute(data) and len(self._answers) < MAX_ENTRIES:
            self._answers[key] = bytes(response.body)
        return response


def _timed_mute(data: dict[str, Any]) -> bool:
    """Whether a conversation on the page is muted until a time (which may pass any moment;
    a timed mute already over shows `muted: false` and stays so)."""
    return any(c["muted"] and c.get("muted_until") for c in data["conversations"])
