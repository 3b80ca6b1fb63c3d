"""The session tables of replica ids (specs/protocol.md §11): each replica id a COMPACT_DELTA
refers to is sent once per connection, then by its index in the sender's table. Each side's
table holds the conversation ids it sent too (§15, version 5): a body's key is the id the
first time, its index in the table after.

Each direction has its own table, which starts empty on every connection (a reconnect
starts a new one, so nothing of it outlives the session) and holds at most
`MAX_SESSION_IDS` ids: a peer cannot grow ours without bound, and a sender whose table is
full sends plain DELTAs. Pure data: no I/O here.
"""

from __future__ import annotations

from .. import codec
from ..crdt import ConversationMap
from ..errors import DecodeError
from ._budget import MAX_FRAME_CONVERSATIONS
from ._errors import RemoteProtocolError
from ._messages import MAX_SESSION_CONVERSATIONS, MAX_SESSION_IDS, CompactDelta

__all__ = ["ReceivedIds", "SentIds"]


class SentIds:
    """The table of the ids we sent the peer on this connection."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}  # replica id -> index, in the order sent
        self._convs: dict[str, int] = {}  # conversation id -> index, in the order sent (§15)
        self._last_convs: list[str] = []  # what the last `encode` added to _convs

    def encode(self, m: ConversationMap) -> tuple[tuple[str, ...], bytes] | None:
        """(ids new to the table, body) of `m` for a COMPACT_DELTA, the table grown by
        the new replica ids and (while it has room) the conversation ids sent as strings;
        None, the table unchanged, when the replica ids would take it over the limit."""
        ids = self._ids
        known = len(ids)
        body, new_convs = codec.encode_map_body_keyed(m, ids, self._convs)
        new = tuple(ids)[known:]
        if len(ids) > MAX_SESSION_IDS:
            for rid in new:
                del ids[rid]
            return None
        convs = self._convs
        added = new_convs[:MAX_SESSION_CONVERSATIONS - len(convs)]
        for cid in added:
            convs[cid] = len(convs)
        self._last_convs = added
        return new, body

    def take_back(self, new: tuple[str, ...]) -> None:
        """Take back what the last `encode` added (replica ids `new`, and its conversation
        ids), for a frame that is not sent after all."""
        self.forget(new)
        for cid in self._last_convs:
            del self._convs[cid]
        self._last_convs = []

    def indexes(self, rids: list[str]) -> tuple[list[int], tuple[str, ...]] | None:
        """The indexes of `rids`, and the ones new to the table (added to it now), for a
        HAVE; None, the table unchanged, when they would take it over the limit."""
        ids = self._ids
        known = len(ids)
        out = [ids.setdefault(rid, len(ids)) for rid in rids]
        new = tuple(ids)[known:]
        if len(ids) > MAX_SESSION_IDS:
            self.forget(new)
            return None
        return out, new

    def forget(self, new: tuple[str, ...]) -> None:
        """Take back ids `encode` added for a frame that is not sent after all."""
        for rid in new:
            del self._ids[rid]


class ReceivedIds:
    """The peer's table, as its COMPACT_DELTAs built it."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._known: set[str] = set()
        self._prefix = codec.table_prefix([])
        self._convs = codec.ConversationKeys(MAX_SESSION_CONVERSATIONS)  # §15

    def payload(self, m: CompactDelta) -> bytes:
        """Extend the table by `m.new_ids` and the conversation ids `m.body` sends as
        strings, and return `m`'s payload as an ordinary encoded conversation map
        (specs/crdt.md §7), its keys the conversation ids, for the strict decoder."""
        self.extend(m.new_ids, "COMPACT_DELTA")
        try:
            return codec.rekey_body(m.body, self._convs, MAX_FRAME_CONVERSATIONS, self._prefix)
        except DecodeError as e:
            raise RemoteProtocolError(f"COMPACT_DELTA: {e}") from None

    def extend(self, new_ids: tuple[str, ...], what: str) -> None:
        """Append `new_ids` (of a COMPACT_DELTA or HAVE) to the table, refusing an id it
        holds and a table over the limit."""
        if not new_ids:
            return
        if len(self._ids) + len(new_ids) > MAX_SESSION_IDS:
            raise RemoteProtocolError(f"{what}: over {MAX_SESSION_IDS} replica ids "
                                      "in the session table")
        for rid in new_ids:
            if rid in self._known:
                raise RemoteProtocolError(f"{what}: replica id {rid!r:.80} is "
                                          "already in the session table")
            self._known.add(rid)
            self._ids.append(rid)
        self._prefix = codec.table_prefix(self._ids)

    @property
    def ids(self) -> list[str]:
        """The table: index -> replica id."""
        return self._ids
