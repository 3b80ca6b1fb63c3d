"""Reads: conversations, pages in list order, and the delta log as deltas and chunks.

Every read runs in one LMDB read transaction, a consistent snapshot (specs/storage.md §4):
`get` and `list_conversations` for apps, `delta_since` for a custom transport, and
`delta_interval`, `state_chunk` and `encoded_state_chunk` for the sync session
(crdtim/protocol). Nothing here writes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .. import codec
from ..crdt import (
    Conversation,
    ConversationMap,
    History,
    Lww,
    MessageState,
    conversation_view,
    join_fields,
)
from ..crdt.conversation import Fields, trusted_map
from ..errors import CorruptStoreError, DecodeError, LogTrimmedError
from ..store import Txn
from ._checks import InvalidArgument, check_cid, check_seq
from ._core import ReplicaCore
from ._message_index import MessageIndex
from ._subscriptions import MESSAGES

__all__ = ["Page", "Reads", "decode_cursor", "encode_cursor", "too_many_messages"]


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: conversations (list) or messages (history)."""

    items: list[T]
    cursor: str | None  # pass back for the next page; None on the last page
    has_more: bool


class Reads(ReplicaCore):
    """The reads of a Replica: for apps, and for the sync session."""

    def get(self, cid: str) -> Conversation | None:
        check_cid(cid)
        fields = self.store.read(lambda t: self._load(t, cid))
        return conversation_view(cid, fields, self.schema, self._now()) if fields else None

    def list_conversations(self, limit: int = 50, cursor: str | None = None, *,
                           archived: bool = False, unread: bool | None = None,
                           pinned: bool | None = None) -> Page[Conversation]:
        """One page of conversations: pinned first, then newest message first, then by id.

        Lists the conversations that are not deleted and are archived iff `archived`; with
        `unread` (True/False), only those that are (not) unread or marked unread; with
        `pinned`, only those that are (not) pinned (specs/storage.md §4, "Filters"). A page
        has fewer than `limit` items only at the end, and has_more says whether more match.
        Costs O(limit) index entries when most conversations match, up to all of them when
        few do.
        """
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be an integer from 1 to 10000, not {limit!r}")
        if type(archived) is not bool:
            raise InvalidArgument(f"archived must be True or False, not {archived!r:.40}")
        for name, value in (("unread", unread), ("pinned", pinned)):
            if value is not None and type(value) is not bool:
                raise InvalidArgument(f"{name} must be True, False or None, not {value!r:.40}")

        def wanted(c: Conversation) -> bool:
            return (not c.deleted and c.archived == archived
                    and (unread is None or (c.unread > 0 or c.marked_unread) == unread)
                    and (pinned is None or c.pinned == pinned))

        return self._page(limit, decode_cursor(cursor), wanted)

    def _page(self, limit: int, after: bytes | None,
              wanted: Callable[[Conversation], bool]) -> Page[Conversation]:
        """Up to `limit` conversations after index key `after` that are `wanted`, in list
        order, in one read transaction."""
        now = self._now()

        def read(t: Txn) -> tuple[list[tuple[bytes, Conversation]], bool]:
            items: list[tuple[bytes, Conversation]] = []
            for key in t.order_keys(after):
                cid = key[9:].decode()
                view = conversation_view(cid, self._load(t, cid), self.schema, now)
                if not wanted(view):
                    continue
                if len(items) == limit:
                    return items, True  # one more matches: the page is not the last
                items.append((key, view))
            return items, False

        rows, has_more = self.store.read(read)
        next_cursor = encode_cursor(rows[-1][0]) if has_more else None
        return Page([view for _, view in rows], next_cursor, has_more)

    def __iter__(self) -> Iterator[Conversation]:
        """Every conversation, in list order, a page at a time (archived and deleted ones
        too: no filter)."""
        cursor = None
        while True:
            page = self._page(500, decode_cursor(cursor), lambda c: True)
            yield from page.items
            if not page.has_more:
                return
            cursor = page.cursor

    def __len__(self) -> int:
        return self.store.read(lambda t: t.conversation_count())

    @property
    def head(self) -> int:
        """Sequence number of the newest delta-log entry (0 for none)."""
        return self.store.read(lambda t: t.head())

    @property
    def log_floor(self) -> int:
        """Entries at or below this sequence have been dropped from the log."""
        return self.store.read(lambda t: t.log_floor())

    def state(self) -> ConversationMap:
        """The whole state as one map, messages included (reads every conversation and
        message: for tests and small replicas)."""
        return self.store.read(self._whole_state)

    def _whole_state(self, t: Txn) -> ConversationMap:
        convs = {}
        for cid, raw in t.conversations():
            fields = self._decode(cid, raw)
            history = MessageIndex(t, cid).state()
            convs[cid] = {**fields, MESSAGES: history} if not history.is_bottom() else fields
        return ConversationMap(convs, self.schema)

    def delta_since(self, seq: int) -> bytes:
        """Encoded delta of everything logged after `seq`, for a custom transport.

        If entries after `seq` were already dropped from the log, the whole state is returned
        instead (a state is a delta too), so the receiver still converges.
        """
        check_seq(seq, "seq")
        return self.store.read(lambda t: codec.encode_map(self._delta_since(t, seq)))

    def _delta_since(self, t: Txn, seq: int) -> ConversationMap:
        if seq < t.log_floor():
            return self._whole_state(t)
        acc: dict[str, Fields] = {}
        for _, _, payload in t.log_entries(seq):
            _join_into(acc, self._decode_log(payload))
        return ConversationMap(acc, self.schema)

    # -- replication support (used by crdtim/protocol through a narrow interface) ------------

    def delta_interval(self, after: int, *, skip_origin: str | None = None,
                       max_entries: int = 1000, max_bytes: int | None = None,
                       skip: Callable[[int, str], bool] | None = None
                       ) -> tuple[int, ConversationMap | None]:
        """(to, delta): the join of log entries in (after, to], leaving out those that came
        from `skip_origin` (no back-propagation); at most `max_entries` entries, and no more
        than `max_bytes` of encoded entries unless the first alone is larger. `delta` is
        None when every entry in the range was left out or there are none (then to == after).
        `skip(seq, origin)`, if given, leaves out more entries (the ones a peer already
        holds, specs/protocol.md §12); like those of `skip_origin` they are still covered.
        Each entry is decoded once for every session relaying it, and `delta` may be shared
        with them: not to be changed (specs/storage.md §4, "Decoded log entries are shared").

        Raises LogTrimmedError if entries after `after` were already dropped: checked in the
        same read transaction, so a trim can never make a gap go unnoticed.
        """
        check_seq(after, "after")

        def read(t: Txn) -> tuple[int, ConversationMap | None]:
            if after < t.log_floor():
                raise LogTrimmedError(f"log entries after {after} were dropped "
                                      f"(log floor {t.log_floor()})")
            acc: dict[str, Fields] = {}
            only: ConversationMap | None = None  # the interval's one entry, so far
            to = after
            size = 0
            for i, (seq, origin, payload) in enumerate(t.log_entries(after)):
                if i == max_entries:
                    break
                if (skip_origin is None or origin != skip_origin) and (
                        skip is None or not skip(seq, origin)):
                    size += len(payload)
                    if max_bytes is not None and size > max_bytes and acc:
                        break
                    # Decoded once for all the sessions relaying it (_log_cache.py).
                    entry = self._decode_log_entry(seq, payload)
                    if acc and too_many_messages(acc, entry):
                        break
                    only = entry if not acc else None
                    _join_into(acc, entry)
                to = seq
            if not acc:
                return to, None
            # One entry goes out as the (shared) map it is; a join of normalized maps is
            # normalized (ConversationMap.join_all), so it needs no normalizing copy.
            return to, only if only is not None else trusted_map(acc, self.schema)
        return self.store.read(read)

    def state_chunk(self, after: str | None, max_conversations: int = 1000,
                    max_bytes: int | None = None) -> tuple[ConversationMap, str | None]:
        """Up to `max_conversations` conversations after id `after` (and, but for the first,
        no more than `max_bytes` of them encoded), as a delta, and the id to continue after
        (None when this was the last chunk)."""
        def read(t: Txn) -> tuple[ConversationMap, str | None]:
            convs: dict[str, Fields] = {}
            last = None
            size = 0
            for cid, raw in t.conversations(after):
                size += len(raw)
                if len(convs) == max_conversations or (
                        max_bytes is not None and size > max_bytes and convs):
                    return ConversationMap(convs, self.schema), last
                fields = self._decode(cid, raw)
                history = MessageIndex(t, cid).state()
                convs[cid] = {**fields, MESSAGES: history} if not history.is_bottom() else fields
                last = cid
            return ConversationMap(convs, self.schema), None
        return self.store.read(read)

    def encoded_state_chunk(self, after: str | None, max_conversations: int = 1000,
                            max_bytes: int | None = None, scope: tuple[str, ...] | None = None
                            ) -> tuple[bytes | None, str | None]:
        """state_chunk, encoded (codec.encode_map), of the conversations in `scope` (id
        prefixes; None: all), and the opaque place to continue after (None: this was the last
        chunk). A conversation's messages follow its record, up to `max_conversations`
        records of them per chunk too, so a long history spans chunks (specs/protocol.md §5).
        A chunk without messages sends the stored values without decoding and encoding them
        again (codec.encode_stored_map). None for a chunk with nothing in scope."""
        start_cid, start_key, resume_at = _transfer_place(after)

        def read(t: Txn) -> tuple[list[tuple[str, bytes]], dict[str, History], str | None]:
            stored: list[tuple[str, bytes]] = []
            histories: dict[str, History] = {}
            budget = _Budget(max_conversations, max_bytes)
            if start_key is not None:
                assert start_cid is not None
                place = self._chunk_messages(t, start_cid, start_key, budget, histories, scope)
                if place is not None:
                    return stored, histories, place
            for cid, raw in t.conversations(start_cid, inclusive=resume_at):
                if not budget.take(len(raw)):
                    return stored, histories, _place(cid_before=cid)
                in_scope = scope is None or cid.startswith(scope)
                if in_scope:
                    stored.append((cid, raw))
                place = self._chunk_messages(t, cid, b"", budget, histories, scope)
                if place is not None:
                    return stored, histories, place
            return stored, histories, None

        stored, histories, place = self.store.read(read)
        if not stored and not histories:
            return None, place
        try:
            if not histories:
                return codec.encode_stored_map(stored, self.schema), place
            convs = {cid: self._decode(cid, raw) for cid, raw in stored}
            for cid, history in histories.items():
                convs[cid] = {**convs.get(cid, {}), MESSAGES: history}
            return codec.encode_map(codec.trusted_map(convs, self.schema)), place
        except DecodeError as e:
            raise CorruptStoreError(f"{self.store.path}: cannot read a stored conversation "
                                    f"({e}): the file is damaged, or was written with a "
                                    f"schema that has more fields") from None

    def _chunk_messages(self, t: Txn, cid: str, after: bytes, budget: _Budget,
                        out: dict[str, History], scope: tuple[str, ...] | None) -> str | None:
        """Add `cid`'s message and choice records after record key `after` to `out`, while
        the budget lasts; the place to continue from when it ran out, else None."""
        if scope is not None and not cid.startswith(scope):
            return None
        index = MessageIndex(t, cid)
        messages: dict[str, MessageState] = {}
        choices: dict[str, Lww] = {}
        place = None
        taken = after
        for name, raw in index.records(after):
            if not budget.take(len(raw)):
                place = _place(cid, taken)  # continue after the last record taken
                break
            taken = name
            index.read_into(name, messages, choices)
        if messages or choices:
            out[cid] = History(messages, choices)
        return place


class _Budget:
    """Records (conversations, messages) and bytes left for one chunk; the first record is
    always taken, however large."""

    __slots__ = ("bytes", "count", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int | None):
        self.max_count, self.max_bytes = max_count, max_bytes
        self.count = self.bytes = 0

    def take(self, size: int) -> bool:
        if self.count and (self.count == self.max_count or (
                self.max_bytes is not None and self.bytes + size > self.max_bytes)):
            return False
        self.count += 1
        self.bytes += size
        return True


def _place(cid: str | None = None, key: bytes | None = None, cid_before: str | None = None
           ) -> str:
    """A state transfer's opaque place: after conversation `cid`'s record `key` ("m"), or
    before conversation `cid_before` ("c": resume at it)."""
    if cid_before is not None:
        return "c" + cid_before
    assert cid is not None and key is not None
    return "m" + base64.urlsafe_b64encode(key).decode() + ":" + cid


def _transfer_place(place: str | None) -> tuple[str | None, bytes | None, bool]:
    """(a conversation id, the message key to continue after in it, whether to list the
    conversations from that id on rather than after it)."""
    if place is None:
        return None, None, False
    if place[:1] == "m":
        key, _, cid = place[1:].partition(":")
        return cid, base64.urlsafe_b64decode(key), False
    return place[1:], None, True


def too_many_messages(acc: dict[str, Fields], entry: ConversationMap) -> bool:
    """Whether joining `entry` could give one conversation more message and choice records,
    or one message more appends, than a peer decodes in one delta (codec.Limits.max_messages,
    max_appends): then it goes in the next DELTA. A single entry never has more (local
    writes refuse or fold it, remote ones were decoded under it, held ones are kept apart by
    _pending.hold)."""
    limits = codec.DEFAULT_LIMITS
    for cid, fields in entry.convs.items():
        for name, _ in entry.schema.histories:  # `messages`, and an app's own histories
            history = fields.get(name)
            held = acc.get(cid, {}).get(name)
            if history is None or held is None:
                continue
            if _records(history) + _records(held) > limits.max_messages:
                return True
            # Appends per message too: an interval that leaves out the peer's own entries
            # leaves out its edits, which are what drops appends made on older texts.
            for mid, m in history.messages.items():
                mine = held.messages.get(mid)
                if mine is not None and len(m.appends) + len(mine.appends) > limits.max_appends:
                    return True
    return False


def _records(history: History) -> int:
    return len(history.messages) + len(history.choices)


def _join_into(acc: dict[str, Fields], delta: ConversationMap) -> None:
    for cid, fields in delta.convs.items():
        acc[cid] = join_fields(acc.get(cid, {}), fields)


def encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def decode_cursor(cursor: str | None, valid: Callable[[bytes], bool] | None = None
                  ) -> bytes | None:
    """The key a cursor names; InvalidArgument unless it is one `valid` accepts (default:
    a list order key)."""
    if cursor is None:
        return None
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        key = b""
    if not (valid or _order_key_shape)(key):
        raise InvalidArgument(f"invalid cursor {cursor!r:.60}: pass back a cursor that an "
                              f"earlier page returned")
    return key


def _order_key_shape(key: bytes) -> bool:
    return len(key) >= 10 and key[0] in (0, 1)
