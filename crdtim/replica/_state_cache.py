"""Decoded conversation states, remembered by the exact bytes they were decoded from.

A write loads each conversation it touches: read, check the seal, decode (specs/storage.md
§2). When the same conversation is written again soon -- a batch after a batch, a chat that
is busy -- decoding the bytes this process itself just encoded is most of that load. The
cache keeps, per conversation, the sealed value last read or written by this process and
its decoded state; a load still reads the stored value in its own transaction and uses the
cached state only when the stored bytes are exactly the cached ones. So it never serves a
state older than the last commit of any process (another process's write changes the bytes;
an aborted write of ours leaves them as they were), and equal bytes decode to equal states.
Bounded: when full it starts again empty. No I/O here.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from ..crdt.conversation import Fields

__all__ = ["MAX_CACHED_STATES", "BytesCheckedCache", "StateCache"]

K = TypeVar("K")
V = TypeVar("V")

#: Conversations remembered, at most, and the most bytes of their stored values: a few MB
#: of decoded states at most, whatever their texts hold.
MAX_CACHED_STATES = 8192
MAX_CACHED_BYTES = 2 << 20
#: A larger value is not remembered: decoding it is mostly copying its texts, and a few
#: large ones would crowd out the many small ones that decoding costs most for.
MAX_CACHED_VALUE = 1024


class BytesCheckedCache(Generic[K, V]):
    """key -> (bytes as stored, what they decode to), served only for those exact bytes:
    equal bytes decode to equal values, so nothing stale is served whoever wrote since.
    The eviction policy is the subclass's `put`."""

    __slots__ = ("_bytes", "_entries")

    def __init__(self) -> None:
        self._bytes = 0  # len() of the stored values held
        self._entries: dict[K, tuple[bytes, V]] = {}

    def get(self, key: K, raw: bytes) -> V | None:
        """What `raw` decodes to, if it is the value remembered for `key`."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] == raw:
            return entry[1]
        return None

    def _forget(self, key: K) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])

    def _keep(self, key: K, raw: bytes, value: V) -> None:
        self._entries[key] = (raw, value)
        self._bytes += len(raw)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


class StateCache(BytesCheckedCache[str, Fields]):
    """conversation id -> (sealed bytes, the state they decode to).

    When full it is emptied at once rather than kept in least-recently-used order: a write
    that misses (most writes of a batch over many conversations do) then costs a dict
    lookup and a store, not the bookkeeping of an order.
    """

    __slots__ = ("_limit",)

    def __init__(self, limit: int = MAX_CACHED_STATES) -> None:
        super().__init__()
        self._limit = limit

    def put(self, cid: str, sealed: bytes, state: Fields) -> None:
        """Remember that `sealed` (as stored) decodes to `state`; the caller must have made
        one from the other (decoded it, or encoded and sealed it)."""
        self._forget(cid)
        size = len(sealed)
        if size > MAX_CACHED_VALUE:
            return
        if len(self._entries) >= self._limit or self._bytes + size > MAX_CACHED_BYTES:
            self.clear()
            if self._limit <= 0:
                return
        self._keep(cid, sealed, state)
