"""The replica as a session sees it: the narrow contract between protocol and storage.

A session reaches its replica only through this interface (crdtim.Replica provides it), so a
test can drive a session over an in-memory replica. Declarations only: no I/O here.
"""

from __future__ import annotations

from typing import Protocol

from ..crdt import ConversationMap, Schema

__all__ = ["ReplicaPort"]


class ReplicaPort(Protocol):
    """What a session needs of a replica (crdtim.Replica provides it)."""

    id: str
    schema: Schema

    @property
    def head(self) -> int: ...
    @property
    def log_floor(self) -> int: ...
    def delta_interval(self, after: int, *, skip_origin: str | None = None,
                       max_entries: int = ...) -> tuple[int, ConversationMap | None]:
        """Raises LogTrimmedError when entries after `after` are gone."""
    def state_chunk(self, after: str | None, max_conversations: int = ...
                    ) -> tuple[ConversationMap, str | None]: ...
    def apply_map(self, delta: ConversationMap, origin: str | None = None, *,
                  received: tuple[str, int] | None = None) -> set[str]: ...
    def record_ack(self, peer: str, seq: int) -> None: ...
    def received_from(self, peer: str) -> int: ...
    def bind_peer(self, peer: str, identity: str) -> None:
        """Raises PeerIdentityError when `peer` is bound to another identity."""
    # Optional, used when the replica has them (crdtim.Replica does): the scope a peer's acks
    # were earned under, sent_scope(peer) -> prefixes | None and set_sent_scope(peer, scope)
    # (without them a widened scope is not noticed); and fast paths of a state transfer,
    # each doing exactly what the required method next to it does:
    #   encoded_state_chunk(after, max_conversations, max_bytes, scope)
    #       -> (codec.encode_map of state_chunk's map within scope, or None if empty; after)
    #   apply_state_chunk(chunk, wire: codec.Received, origin) -> apply_map(chunk, origin)

