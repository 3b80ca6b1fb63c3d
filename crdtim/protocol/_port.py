"""The replica as a session sees it: the typed contract between protocol and storage.

A session reaches its replica only through `ReplicaPort` (crdtim.Replica provides all of it),
so a test or a benchmark can drive sessions over an in-memory replica. Every member the
session uses is declared here with its real signature; the session probes for nothing.
Declarations only: no I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .. import codec
from ..crdt import ConversationMap, Schema

__all__ = ["ReplicaPort"]


class ReplicaPort(Protocol):
    """What a session needs of a replica (specs/protocol.md §4-§6 for when each is used)."""

    @property
    def id(self) -> str:
        """This replica's id, sent in our HELLO."""

    @property
    def schema(self) -> Schema:
        """The fields of a conversation: payloads are decoded against it."""

    # -- our log, streamed to the peer --------------------------------------------------------

    @property
    def head(self) -> int:
        """Sequence number of the newest log entry (0 for none)."""

    @property
    def log_floor(self) -> int:
        """Entries at or below this sequence were dropped: a peer behind it needs a state
        transfer."""

    def delta_interval(self, after: int, *, skip_origin: str | None = None,
                       max_entries: int = ..., max_bytes: int | None = None,
                       skip: Callable[[int, str], bool] | None = None
                       ) -> tuple[int, ConversationMap | None]:
        """(end, join of the entries in (after, end] not from `skip_origin`, or None); at most
        `max_entries` entries and, but for the first, `max_bytes` of them encoded; entries
        for which `skip(seq, origin)` is true are left out too (specs/protocol.md §12).
        Raises LogTrimmedError when entries after `after` are gone. The map may be shared
        with other sessions (specs/storage.md §4): not to be changed."""

    def encoded_state_chunk(self, after: str | None, max_conversations: int = ...,
                            max_bytes: int | None = None,
                            scope: tuple[str, ...] | None = None
                            ) -> tuple[bytes | None, str | None]:
        """(codec.encode_map of the next conversations after id `after` within `scope`, or
        None when none of them is in scope; the id to continue after, None at the end). At
        most `max_conversations` and, but for the first, `max_bytes` of them."""

    def conversation_digests(self, scope: tuple[str, ...] | None = None
                             ) -> tuple[int, list[bytes], bytes]:
        """(head, the ids in `scope` in key order as UTF-8, their 16-byte digests
        concatenated), read together: the state read holds the log up to `head`
        (specs/protocol.md §13)."""

    def encoded_conversations(self, cids: list[bytes], max_conversations: int,
                              max_bytes: int | None) -> tuple[bytes | None, int]:
        """(codec.encode_map of the whole states of the first of `cids`, or None when none
        of them is stored; how many were taken): at most `max_conversations` and, but for the
        first, `max_bytes` of them."""

    def record_ack(self, peer: str, seq: int) -> None:
        """`peer` holds our log up to `seq` (never moves back)."""

    def sent_scope(self, peer: str) -> tuple[str, ...] | None:
        """The conversation id prefixes `peer` was limited to when it earned its acks
        (None: everything), to notice a widened scope (specs/security.md §5)."""

    def set_sent_scope(self, peer: str, scope: tuple[str, ...] | None) -> None:
        """Record the scope under which `peer` acknowledges our log from now on."""

    # -- the peer's log, applied here ---------------------------------------------------------

    def apply_map(self, delta: ConversationMap, origin: str | None = None, *,
                  received: tuple[str, int] | None = None) -> set[str]:
        """Join `delta` in one transaction, logging the novel part with `origin`, and record
        `received=(peer, seq)` if it moves forward; returns the conversation ids that changed.
        Raises ClockDriftError or DecodeError to refuse it whole."""

    def apply_state_chunk(self, chunk: ConversationMap, wire: codec.Received,
                          origin: str | None = None) -> set[str]:
        """apply_map(chunk, origin) for a STATE_CHUNK decoded with
        codec.decode_map_as_received; `wire` lets new conversations be stored as received."""

    def received_from(self, peer: str) -> int:
        """Highest sequence of `peer`'s log applied here: where it resumes."""

    def bind_peer(self, peer: str, identity: str) -> None:
        """Bind `peer`'s replica id to the identity it authenticated as, on first sight.
        Raises PeerIdentityError when it is bound to another identity."""
