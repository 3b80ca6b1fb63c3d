"""Message history: the mutators an app calls (post, regenerate, append, edit, switch,
delete_message) and the reads (message, history, versions).

Each write is a delta mutator of crdt/history_ops.py run against the stored history
(`MessageIndex`) inside one write transaction, with the conversation's own fields in the same
commit: a post also becomes the conversation's last message, raises `last_seq` when it has a
`seq`, and, when it is this user's own (specs/crdt.md §8), is read already and clears the
draft. A refused call raises InvalidArgument naming what was wrong and changes nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..crdt import DEFAULT_MESSAGE_LIMITS, History, Lww, MaxReg, MessageError, MessageLimits
from ..crdt import history_ops as ops
from ..crdt.conversation import Fields, message_arrived_delta
from ..crdt.history_ops import Changes, HistoryView
from ..crdt.lww import Stamp
from ..crdt.message import Header, MessageState, group_of
from ..store import Txn
from ._checks import InvalidArgument, check_cid, check_seq
from ._local import LocalWrites
from ._message_index import MAX_INDEX_KEY_BYTES, MessageIndex, index_key_bytes, pos_id
from ._reads import Page, decode_cursor, encode_cursor
from ._subscriptions import MESSAGES
from ._write import LocalOp, WriteTxn

__all__ = ["PREVIEW_CHARS", "Message", "Messages", "new_message_id"]

#: Characters of a post's text that become the conversation's last-message preview.
PREVIEW_CHARS = 200


def new_message_id() -> str:
    """A fresh message id, unique across replicas (96 random bits)."""
    return secrets.token_urlsafe(12)


@dataclass(frozen=True, slots=True)
class Message:
    """One message as an app sees it (specs/crdt.md §8). `version` is its index in its group
    of versions (oldest first), `versions` the group's size; `edited` the time (ms) of the
    last edit, None if never edited; `visible` whether it is on the visible path (§8.3.3)."""

    id: str
    cid: str
    parent: str | None
    role: str
    author: str | None
    text: str
    at: int
    seq: int | None
    edited: int | None
    deleted: bool
    version: int
    versions: int
    visible: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Messages(LocalWrites):
    """The message history of a Replica's conversations."""

    message_limits: MessageLimits = DEFAULT_MESSAGE_LIMITS

    # -- writes ------------------------------------------------------------------------------

    def post(self, cid: str, text: str, *, role: str = "user", reply_to: str | None = None,
             id: str | None = None, seq: int | None = None, at: int | None = None,
             author: str | None = None) -> Message:
        """Post a message after the newest visible one, or after `reply_to` (a new branch
        there if it already has a continuation). With the id of an earlier post and the same
        fields, a retry: nothing changes. Returns the message."""
        check_cid(cid)
        mid = new_message_id() if id is None else id
        _check_strings(mid=mid, text=text, role=role, reply_to=reply_to, author=author)
        if seq is not None:
            check_seq(seq, "seq")
        if at is not None:
            self._check_at(at)
        own = author is None and role == "user"

        def op(w: WriteTxn, cur: Fields) -> Fields:
            stamp = w.stamp()
            view = w.history(cid)
            # A retry compares a given `at` with the post's (§8.5.1): only a new post moves.
            when = at if at is not None or view.header(mid) is not None else \
                _after_clear(cur, stamp.wall)
            return self._with_fields(cur, _run(ops.post, view, mid, text, stamp,
                                                   role=role, reply_to=reply_to, at=when,
                                                   seq=seq, author=author,
                                                   limits=self.message_limits),
                                     mid, seq, own, stamp)

        return self._write_message(cid, mid, op, Message(
            mid, cid, reply_to, role, author, text, self._now() if at is None else at, seq,
            None, False, 0, 1))

    def regenerate(self, cid: str, mid: str, text: str = "", *, role: str | None = None,
                   id: str | None = None) -> Message:
        """A new version of message `mid` (same parent), made active: the history now shows
        it in `mid`'s place, and nothing after `mid`. Returns the new version."""
        check_cid(cid)
        new = new_message_id() if id is None else id
        _check_strings(mid=mid, text=text, role=role, id=new)

        def op(w: WriteTxn, cur: Fields) -> Fields:
            stamp = w.stamp()
            return self._with_fields(cur, _run(ops.regenerate, w.history(cid), mid, new, text,
                                                   stamp, role=role,
                                                   at=_after_clear(cur, stamp.wall),
                                                   limits=self.message_limits),
                                     new, None, False, stamp)

        return self._write_message(cid, new, op, Message(
            new, cid, None, role or "", None, text, self._now(), None, None, False, 0, 1))

    def append(self, cid: str, mid: str, text: str) -> None:
        """Add `text` at the end of message `mid` (a streamed reply): only `text` is sent."""
        check_cid(cid)
        _check_strings(mid=mid, text=text)

        def op(w: WriteTxn, cur: Fields) -> Fields:
            index = w.history(cid)
            before = index.message(mid)
            messages, choices = _run(ops.append, index, mid, text, w.stamp(),
                                     self.message_limits)
            if not messages:
                return {}
            return {MESSAGES: History(messages, choices),
                    **_grown_preview(cur, before, before.text + text)}

        self._local(cid, op)

    def edit(self, cid: str, mid: str, text: str) -> None:
        """Replace the text of `mid` (last writer wins; appends made on the old text go)."""
        check_cid(cid)
        _check_strings(mid=mid, text=text)
        self._message_op(cid, lambda w: _run(ops.edit, w.history(cid), mid, text, w.stamp(),
                                             self.message_limits))

    def switch(self, cid: str, mid: str) -> None:
        """Make version `mid` active, and the branch it is on: the history shows its path."""
        check_cid(cid)
        _check_strings(mid=mid)
        self._message_op(cid, lambda w: _run(ops.switch, w.history(cid), mid, w.stamp()))

    def delete_message(self, cid: str, mid: str) -> None:
        """Delete `mid` for everyone: its text and author leave every replica; its place (and
        its replies) stay in the history, as deleted."""
        check_cid(cid)
        _check_strings(mid=mid)
        self._message_op(cid, lambda w: _run(ops.delete, w.history(cid), mid))

    def _message_op(self, cid: str, changes: Callable[[WriteTxn], Changes]) -> None:
        def op(w: WriteTxn, cur: Fields) -> Fields:
            messages, choices = changes(w)
            return {MESSAGES: History(messages, choices)} if messages or choices else {}

        self._local(cid, op)

    def _with_fields(self, cur: Fields, changes: Changes, mid: str, seq: int | None,
                     own: bool, stamp: Stamp) -> Fields:
        """The post's delta with what it does to the conversation: last message (and
        last_seq), and for this user's own post, read through it and no draft."""
        messages, choices = changes
        if not messages:
            return {}  # a retried post
        header = messages[mid].header
        assert header is not None
        if index_key_bytes(mid, header) > MAX_INDEX_KEY_BYTES:
            # specs/storage.md §2: the ids live in LMDB keys, bounded together.
            raise InvalidArgument(
                f"message id {mid!r:.80}: with its group or parent id and this replica's id "
                f"its index key would be {index_key_bytes(mid, header)} bytes, over "
                f"{MAX_INDEX_KEY_BYTES}: use a shorter id")
        text = messages[mid].base.value
        delta = message_arrived_delta(cur, seq or 0, text[:PREVIEW_CHARS], header.at, self.id,
                                      _tiebreak(header))
        if own and seq is not None:
            read = cur.get("read_seq", MaxReg.bottom()).raise_to(seq)
            if not read.is_bottom():
                delta["read_seq"] = read
        if own and cur.get("draft") is not None and cur["draft"].value:
            delta["draft"] = Lww(stamp, "")
        delta[MESSAGES] = History(messages, choices)
        return delta

    def _write_message(self, cid: str, mid: str, op: LocalOp, planned: Message) -> Message:
        self._local(cid, op)
        if self._batch.get() is not None:
            # In a batch the write happens at the block's end, against the state the ops
            # before it make: the message as asked for, its place settled at the commit.
            return planned
        found = self.message(cid, mid)
        assert found is not None, "a committed post is known"
        return found

    def _check_at(self, at: int) -> None:
        if check_seq(at, "at") > self._now() + self.max_clock_drift_ms:
            raise InvalidArgument(f"message time {at} ms is more than "
                                  f"{self.max_clock_drift_ms} ms in the future")

    # -- reads -------------------------------------------------------------------------------

    def message(self, cid: str, mid: str) -> Message | None:
        check_cid(cid)
        _check_strings(mid=mid)
        return self.store.read(lambda t: _message(MessageIndex(t, cid), mid))

    def versions(self, cid: str, mid: str) -> list[Message]:
        """The versions of `mid` (its group), oldest first; [] if `mid` is not known."""
        check_cid(cid)
        _check_strings(mid=mid)

        def read(t: Txn) -> list[Message]:
            index = MessageIndex(t, cid)
            h = index.header(mid)
            if h is None:
                return []
            members = index.members(group_of(mid, h))
            return [_view(cid, m, index.message(m), n, len(members), index.is_visible(m))
                    for n, m in enumerate(members)]

        return self.store.read(read)

    def history(self, cid: str, limit: int = 50, cursor: str | None = None) -> Page[Message]:
        """One page of the visible history (the active path), newest first; pass the page's
        cursor back for the older messages. Messages at or before the time the conversation
        was deleted for me (specs/crdt.md §6) are not shown."""
        check_cid(cid)
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be an integer from 1 to 10000, not {limit!r}")
        before = decode_cursor(cursor, _position_shape)

        def read(t: Txn) -> Page[Message]:
            cleared = self._load(t, cid).get("cleared_at")
            floor = -1 if cleared is None else cleared.value
            index = MessageIndex(t, cid)
            items: list[Message] = []
            last = None
            more = False
            for pos in index.visible_positions(before, 10**18):
                found = _message(index, pos_id(pos))
                # `at` need not follow the (created, id) order (a caller may give it), so a
                # message at or before the clear hides itself only.
                if found is None or found.at <= floor:
                    continue
                if len(items) == limit:
                    more = True  # a further message is shown: the page is not the last
                    break
                items.append(found)
                last = pos
            return Page(items, encode_cursor(last) if more and last else None, more)

        return self.store.read(read)


def _position_shape(pos: bytes) -> bool:
    """Whether `pos` can be a message's position key: wall, counter, replica, NUL, id."""
    return len(pos) >= 15 and b"\x00" in pos[13:-1]


def _message(index: MessageIndex, mid: str) -> Message | None:
    m = index.message(mid)
    if m.header is None:
        return None
    members = index.members(group_of(mid, m.header))
    return _view(index.cid, mid, m, members.index(mid) if mid in members else 0, len(members),
                 index.is_visible(mid))


def _view(cid: str, mid: str, m: MessageState, version: int, versions: int,
          visible: bool) -> Message:
    h = m.header
    assert h is not None
    edited = m.edited
    return Message(mid, cid, h.parent, h.role, h.author, m.text, h.at, h.seq,
                   None if edited is None else edited.wall, m.deleted, version, versions,
                   visible)


def _grown_preview(cur: Fields, m: MessageState, text: str) -> Fields:
    """The last message with a longer preview, when `m` is the conversation's last message
    and its text grew to `text`, extending the preview shown (crdt.md §8.8): same key, so
    the join keeps the longer one. Empty when the preview is not `m`'s, or would not grow."""
    h = m.header
    last = cur.get("last_message")
    if h is None or last is None or last.stamp != Stamp(h.at, _tiebreak(h), h.created.replica):
        return {}
    preview = text[:PREVIEW_CHARS]
    if preview == last.value or not preview.startswith(last.value):
        return {}  # not grown: the same, or edited since (an edit leaves the preview be)
    return {"last_message": Lww(last.stamp, preview)}


def _after_clear(cur: Fields, wall: int) -> int:
    """The time of a message made now, `wall`, unless the conversation was deleted for me
    through it (a delete in this millisecond): then just after, so that what was written
    after the delete is newer than it, shows, and brings the conversation back
    (specs/crdt.md §8.8)."""
    cleared = cur.get("cleared_at")
    return wall if cleared is None or cleared.value < wall else cleared.value + 1


def _tiebreak(h: Header) -> int:
    """The second part of a post's last-message key: its seq, else its created counter."""
    return h.seq if h.seq is not None else h.created.counter


def _run(mutator: Any, view: HistoryView, *args: Any, **kwargs: Any) -> Changes:
    try:
        result: Changes = mutator(view, *args, **kwargs)
    except MessageError as e:
        raise InvalidArgument(str(e)) from None
    return result


def _check_strings(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and type(value) is not str:
            raise InvalidArgument(f"{name} must be a string, not {value!r:.40}")
    mid = values.get("mid")
    if mid is not None:
        try:
            ops.check_message_id(mid)
        except MessageError as e:
            raise InvalidArgument(str(e)) from None
