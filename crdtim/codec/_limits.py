"""The bounds of the encoding (specs/crdt.md §7, "Limits"): the format version, the integer
ranges, and `Limits`, what a decoder enforces, with the peer and storage defaults.

Plain values only: this module imports nothing but the message writer's limits from the pure
core (the decoder's message bounds are multiples of them), msgpack and the lattices
included, so that a layer that needs a bound (the replica's argument checks, the protocol's
field parsers) costs no codec machinery.
"""

from __future__ import annotations

from ..crdt.message import DEFAULT_MESSAGE_LIMITS as _WRITER

FORMAT_VERSION = 1
MAX_INT = 2**63 - 1
MAX_COUNTER = 2**32 - 1
#: UTF-8 bytes of a message id (also of a group id, a parent, an origin and a chosen id):
#: storage keeps ids inside LMDB keys (specs/crdt.md §7, "Messages"). Fixed, like
#: MAX_REPLICA_ID; ids also hold no NUL character.
MAX_MESSAGE_ID_BYTES = 255


class Limits:
    """Bounds a decoder enforces; every one has a named default."""

    __slots__ = (
        "max_append_text", "max_appends", "max_author", "max_bytes", "max_cid",
        "max_conversations", "max_dots", "max_message_id", "max_message_text", "max_messages",
        "max_replicas", "max_role", "max_text")

    def __init__(
        self,
        max_bytes: int = 16 * 1024 * 1024,
        max_conversations: int = 1_000_000,
        max_replicas: int = 10_000,
        max_text: int = 16 * 1024,  # characters in a title or preview
        max_cid: int = 256,  # characters in a conversation id
        max_dots: int = 10_000,  # dots in one flag's state and context cloud
        *,
        # The message history (specs/crdt.md §7, "Messages"). Concurrent appenders, each
        # within the writer's limits, can together pass them (specs/crdt.md §8.7), so
        # the bounds on what joins can grow are multiples of the writer's.
        max_messages: int = 10_000,  # messages + group choices in one conversation's History
        max_message_id: int = _WRITER.max_id,  # code points of a message id (and group ids)
        max_role: int = _WRITER.max_role,  # code points of a role
        max_author: int = _WRITER.max_author,  # code points of an author
        max_message_text: int = 4 * _WRITER.max_text_bytes,  # UTF-8 bytes of a base text
        max_append_text: int = _WRITER.max_text_bytes,  # UTF-8 bytes of one append's text
        max_appends: int = 4 * _WRITER.max_appends,  # appends held by one message
    ):
        self.max_bytes = max_bytes
        self.max_conversations = max_conversations
        self.max_replicas = max_replicas
        self.max_text = max_text
        self.max_cid = max_cid
        self.max_dots = max_dots
        self.max_messages = max_messages
        self.max_message_id = max_message_id
        self.max_role = max_role
        self.max_author = max_author
        self.max_message_text = max_message_text
        self.max_append_text = max_append_text
        self.max_appends = max_appends


DEFAULT_LIMITS = Limits()
#: Decoding what a replica stored itself (specs/crdt.md §7, "Limits"): the same checks of
#: structure and type, without the per-message caps that protect it from peers (a large local
#: batch, or the join of many deltas, may be over them and must still read back). The
#: message bounds a join can pass (messages in a history, appends on a message) are lifted
#: too; those a join cannot grow (ids, role, author, one text) stay.
STORAGE_LIMITS = Limits(max_bytes=2**62, max_conversations=2**62, max_replicas=2**62,
                        max_dots=2**62, max_messages=2**62, max_appends=2**62)
MAX_REPLICA_ID = 64
