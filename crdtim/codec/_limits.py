"""The bounds of the encoding (specs/crdt.md §7, "Limits"): the format version, the integer
ranges, and `Limits`, what a decoder enforces, with the peer and storage defaults.

Plain values only: this module imports nothing, msgpack and the lattices included, so that a
layer that needs a bound (the replica's argument checks, the protocol's field parsers) costs
no codec machinery.
"""

from __future__ import annotations

FORMAT_VERSION = 1
MAX_INT = 2**63 - 1
MAX_COUNTER = 2**32 - 1


class Limits:
    """Bounds a decoder enforces; every one has a named default."""

    __slots__ = (
        "max_bytes", "max_cid", "max_conversations", "max_dots", "max_replicas", "max_text")

    def __init__(
        self,
        max_bytes: int = 16 * 1024 * 1024,
        max_conversations: int = 1_000_000,
        max_replicas: int = 10_000,
        max_text: int = 16 * 1024,  # characters in a title or preview
        max_cid: int = 256,  # characters in a conversation id
        max_dots: int = 10_000,  # dots in one flag's state and context cloud
    ):
        self.max_bytes = max_bytes
        self.max_conversations = max_conversations
        self.max_replicas = max_replicas
        self.max_text = max_text
        self.max_cid = max_cid
        self.max_dots = max_dots


DEFAULT_LIMITS = Limits()
#: Decoding what a replica stored itself (specs/crdt.md §7, "Limits"): the same checks of
#: structure and type, without the per-message caps that protect it from peers (a large local
#: batch, or the join of many deltas, may be over them and must still read back).
STORAGE_LIMITS = Limits(max_bytes=2**62, max_conversations=2**62, max_replicas=2**62,
                        max_dots=2**62)
MAX_REPLICA_ID = 64
