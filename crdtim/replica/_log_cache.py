"""Decoded delta-log entries, remembered by their sequence number and exact bytes.

A replica streams its log to every peer, each session on its own (specs/protocol.md §4):
with N peers, each entry would be read and decoded N times (N-1 for one that came from a
peer, which is not sent back). Decoding is most of what relaying costs, so the decoded entry
is kept here for the other sessions, and an entry this process wrote is kept as the map it
encoded, so that it is not decoded at all (specs/storage.md §4, "Decoded log entries
are shared").

An entry is used only when the stored payload is exactly the remembered one, as in
_state_cache.py: equal bytes decode to equal maps, so nothing stale is ever served, even
when a sequence number comes back (an aborted write's, or one after the whole log was
trimmed). Trimming forgets what it dropped (`forget_upto`). When full, the lowest sequence
numbers go first, and a session reading entries older than all those kept (a peer far
behind) does not push out the newest ones, which the sessions that keep up share.

Small on purpose: every decoded object kept alive is scanned again by Python's cyclic
garbage collector, and a cache of 512 entries (1 MiB) made applying ~25% slower under load
(bench_sync e's shape) than the decodes it saved. No I/O here.
"""

from __future__ import annotations

from ..crdt import ConversationMap
from ._state_cache import BytesCheckedCache

__all__ = ["MAX_LOG_CACHE_BYTES", "MAX_LOG_CACHE_ENTRIES", "MAX_WRITTEN_ENTRY_BYTES", "LogCache"]

#: Entries remembered, at most, and the most bytes of their payloads (which bounds the
#: objects kept alive). The sessions of one replica stream the same new entries within
#: moments of each other, so a short window of the newest is what they share.
MAX_LOG_CACHE_ENTRIES = 64
MAX_LOG_CACHE_BYTES = 128 << 10
#: The largest entry a write puts in as it commits; larger ones go in when first decoded.
MAX_WRITTEN_ENTRY_BYTES = 16 << 10


class LogCache(BytesCheckedCache[int, ConversationMap]):
    """seq -> (payload as stored, the map it decodes to); the lowest seqs go first."""

    __slots__ = ("_max_bytes", "_max_entries")

    def __init__(self, max_entries: int = MAX_LOG_CACHE_ENTRIES,
                 max_bytes: int = MAX_LOG_CACHE_BYTES) -> None:
        super().__init__()
        self._max_entries, self._max_bytes = max_entries, max_bytes

    def put(self, seq: int, payload: bytes, m: ConversationMap) -> None:
        """Remember that the log entry `seq` holding `payload` is `m`; the caller decoded
        one from the other, or encoded it. `m` must not be changed afterwards (maps are
        immutable in use)."""
        self._forget(seq)
        size = len(payload)
        if size > self._max_bytes:
            return
        entries = self._entries
        while entries and (len(entries) >= self._max_entries
                           or self._bytes + size > self._max_bytes):
            lowest = min(entries)  # a few dozen keys: cheaper than keeping them ordered
            if seq < lowest:
                return  # older than every entry kept: they are worth more
            self._forget(lowest)
        self._keep(seq, payload, m)

    def forget_upto(self, seq: int) -> None:
        """Entries at or below `seq` were trimmed from the log: drop them."""
        for k in [k for k in self._entries if k <= seq]:
            self._forget(k)
