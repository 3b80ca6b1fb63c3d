"""The history's delta mutators (specs/crdt.md §8.5), written once against `HistoryView`.

A view answers the questions a mutator asks of a history -- is this message known, which
member of its group is active, is it visible, which message is the newest visible one --
without saying how. `Tree` (history_tree.py) answers them from a whole state in memory, for
the pure lattice and its laws; the replica's message index answers them from LMDB in a few
reads each, so that posting to a 100,000-message conversation reads no more than posting to
a short one. Both run the very same mutator code here, so what the laws check of the pure
mutators holds of the stored ones. Pure: no I/O here.
"""

from __future__ import annotations

from typing import Protocol

from .lww import BOTTOM_STAMP, Lww, Stamp
from .message import (
    DEFAULT_MESSAGE_LIMITS,
    Append,
    Header,
    MessageError,
    MessageLimits,
    MessageState,
    group_of,
)

__all__ = [
    "HistoryView",
    "activation",
    "append",
    "check_message_id",
    "delete",
    "edit",
    "post",
    "regenerate",
    "switch",
]

#: The largest message id in UTF-8 bytes: ids are parts of LMDB keys, whose limit is 511
#: bytes (specs/crdt.md §8.7).
MAX_ID_BYTES = 255

#: A mutator's result: message id -> the message's delta, group id -> its new choice.
Changes = tuple[dict[str, MessageState], dict[str, Lww]]


class HistoryView(Protocol):
    """What a mutator reads of one conversation's history (specs/crdt.md §8.3)."""

    def message(self, mid: str) -> MessageState:
        """The message's state; bottom if it is not known."""
        ...

    def header(self, mid: str) -> Header | None: ...

    def members(self, group: str) -> list[str]:
        """The group's known messages, oldest first by (created, id)."""
        ...

    def active(self, group: str) -> str | None: ...

    def is_visible(self, mid: str) -> bool: ...

    def last_visible(self) -> str | None:
        """The last message of the visible path, None when nothing is visible."""
        ...

    def children(self, mid: str) -> list[str]:
        """The known messages whose parent is `mid`, oldest first by (created, id)."""
        ...


def post(
    view: HistoryView,
    mid: str,
    text: str,
    stamp: Stamp,
    *,
    role: str = "user",
    reply_to: str | None = None,
    at: int | None = None,
    seq: int | None = None,
    author: str | None = None,
    limits: MessageLimits = DEFAULT_MESSAGE_LIMITS,
) -> Changes:
    """A new message: after the newest visible one, or after `reply_to` (a branch there if
    it already has a visible continuation). Re-posting an id is a no-op if its fields match
    and refused if they differ (§8.5.1). `at` defaults to the stamp's wall."""
    check_message_id(mid, limits)
    _check_role_author(role, author, limits)
    _check_text(text, limits)
    _check_at_seq(at, seq)
    existing = view.message(mid)
    if existing.header is not None:
        _same_post_or_refuse(mid, existing.header, existing.deleted, role, author, at, seq,
                             reply_to)
        return {}, {}
    choices: dict[str, Lww] = {}
    origin = None
    if reply_to is None:
        parent = view.last_visible()
    else:
        if view.header(reply_to) is None:
            raise MessageError(f"reply_to {reply_to!r}: no such message")
        parent = reply_to
        choices = activation(view, reply_to, stamp)
        following = _visible_children_after(view, reply_to, choices)
        if following:
            origin = group_of(following[0], _known(view, following[0]))
            _check_group_room(view, origin, limits)
            choices[origin] = Lww(stamp, mid)
    header = Header(parent, origin, role, author, stamp.wall if at is None else at, seq, stamp)
    return {mid: MessageState(header, Lww(stamp, text))}, choices


def regenerate(
    view: HistoryView,
    of: str,
    mid: str,
    text: str,
    stamp: Stamp,
    *,
    role: str | None = None,
    at: int | None = None,
    limits: MessageLimits = DEFAULT_MESSAGE_LIMITS,
) -> Changes:
    """A new version `mid` of message `of` (same parent, same group), made active along with
    its path (§8.5.2). Role and author default to those of `of`."""
    check_message_id(mid, limits)
    _check_text(text, limits)
    _check_at_seq(at, None)
    old = view.header(of)
    if old is None:
        raise MessageError(f"regenerate {of!r}: no such message")
    group = group_of(of, old)
    role = old.role if role is None else role
    _check_role_author(role, None, limits)
    existing = view.header(mid)
    if existing is not None:
        if existing.parent == old.parent and existing.origin == group and existing.role == role:
            return {}, {}
        raise MessageError(f"message {mid!r} exists and is not a version of {of!r}")
    _check_group_room(view, group, limits)
    choices = {} if old.parent is None else activation(view, old.parent, stamp)
    choices[group] = Lww(stamp, mid)
    header = Header(old.parent, group, role, old.author, stamp.wall if at is None else at,
                    None, stamp)
    return {mid: MessageState(header, Lww(stamp, text))}, choices


def append(view: HistoryView, mid: str, text: str, stamp: Stamp,
           limits: MessageLimits = DEFAULT_MESSAGE_LIMITS) -> Changes:
    """Text added at the end of `mid`; the delta holds only that text (§8.5.3). Past
    `max_appends` appends on one base, the delta is an edit to the whole text instead."""
    m = _live(view, mid, "append to")
    if not text:
        return {}, {}
    if m.base.stamp == BOTTOM_STAMP:
        # Known by its header alone (its text has not arrived here yet): an append is made
        # on a text, and one on no text could not be encoded (crdt.md §7, §8.5.3).
        raise MessageError(f"append to {mid!r}: its text has not arrived here yet")
    whole = m.text + text
    _check_text(whole, limits)
    if len(m.current_appends()) >= limits.max_appends:
        return {mid: MessageState(base=Lww(stamp, whole))}, {}
    return {mid: MessageState(appends=frozenset([Append(stamp, m.base.stamp, text)]))}, {}


def edit(view: HistoryView, mid: str, text: str, stamp: Stamp,
         limits: MessageLimits = DEFAULT_MESSAGE_LIMITS) -> Changes:
    """A new base text for `mid`; the appends made on the old base go with it (§8.5.4)."""
    _live(view, mid, "edit")
    _check_text(text, limits)
    return {mid: MessageState(base=Lww(stamp, text))}, {}


def switch(view: HistoryView, mid: str, stamp: Stamp) -> Changes:
    """Make `mid` active in its group and every message on its path active in theirs, so
    that `mid` is visible (§8.5.5); the delta holds only the choices that change."""
    if view.header(mid) is None:
        raise MessageError(f"switch to {mid!r}: no such message")
    return {}, activation(view, mid, stamp)


def delete(view: HistoryView, mid: str) -> Changes:
    """Delete `mid`, for good: its text, appends and author leave the state (§8.5.6)."""
    m = view.message(mid)
    if m.header is None:
        raise MessageError(f"delete {mid!r}: no such message")
    if m.deleted:
        return {}, {}
    return {mid: MessageState(deleted=True)}, {}


def activation(view: HistoryView, mid: str, stamp: Stamp) -> dict[str, Lww]:
    """The choices that make `mid` and each known ancestor active in their groups (§8.5.5).

    The walk stops at the first visible message: it and everything above it are active
    already, so a reply deep in a long visible thread reads a few records, not the thread.
    Where two messages of the path share a group (only a forged state has that), the one
    nearest `mid` is chosen, as in a walk from the root that overwrites.
    """
    out: dict[str, Lww] = {}
    seen: set[str] = set()
    cursor: str | None = mid
    while cursor is not None and cursor not in seen:
        h = view.header(cursor)
        if h is None or view.is_visible(cursor):
            break
        seen.add(cursor)
        group = group_of(cursor, h)
        if group not in out and view.active(group) != cursor:
            out[group] = Lww(stamp, cursor)
        cursor = h.parent
    return out


def _visible_children_after(view: HistoryView, mid: str, choices: dict[str, Lww]) -> list[str]:
    """The children of `mid` that are visible once `choices` are joined: none unless `mid`'s
    path then reaches a root; else those active in their group, oldest first."""
    if not _reaches_root(view, mid):
        return []

    def active_after(child: str) -> bool:
        group = group_of(child, _known(view, child))
        chosen = choices.get(group)
        return (chosen.value if chosen is not None else view.active(group)) == child

    return [c for c in view.children(mid) if active_after(c)]


def _reaches_root(view: HistoryView, mid: str) -> bool:
    """Whether `mid`'s path runs through known messages to a root (no unknown parent, no
    cycle); a visible message on the way settles it."""
    seen: set[str] = set()
    cursor: str | None = mid
    while cursor is not None:
        if cursor in seen:
            return False
        h = view.header(cursor)
        if h is None:
            return False
        if view.is_visible(cursor):
            return True
        seen.add(cursor)
        cursor = h.parent
    return True


def _known(view: HistoryView, mid: str) -> Header:
    h = view.header(mid)
    assert h is not None, f"{mid!r} was listed by the view, so it is known"
    return h


def _live(view: HistoryView, mid: str, what: str) -> MessageState:
    m = view.message(mid)
    if m.header is None:
        raise MessageError(f"{what} {mid!r}: no such message")
    if m.deleted:
        raise MessageError(f"{what} {mid!r}: the message is deleted")
    return m


def _same_post_or_refuse(
    mid: str,
    h: Header,
    deleted: bool,
    role: str,
    author: str | None,
    at: int | None,
    seq: int | None,
    reply_to: str | None,
) -> None:
    # A retried send is one message (§8.5.1): compare the immutable fields the caller gave.
    # A tombstone has lost its author, so the author of a deleted message is not compared.
    differ = [
        name
        for name, same in (
            ("role", role == h.role),
            ("author", deleted or author == h.author),
            ("at", at is None or at == h.at),
            ("seq", seq == h.seq),
            ("reply_to", reply_to is None or reply_to == h.parent),
        )
        if not same
    ]
    if differ:
        raise MessageError(
            f"message {mid!r} exists with different {', '.join(differ)}: a message's fields "
            "cannot change after it is posted"
        )


def check_message_id(mid: str, limits: MessageLimits = DEFAULT_MESSAGE_LIMITS) -> None:
    """1..max_id code points, at most MAX_ID_BYTES UTF-8 bytes, no NUL (§8.7): ids are parts
    of storage keys, where NUL separates an id from what follows it."""
    if not isinstance(mid, str) or not mid or len(mid) > limits.max_id:
        raise MessageError(f"message id {mid!r:.80}: must be 1..{limits.max_id} characters")
    if "\x00" in mid:
        raise MessageError(f"message id {mid!r:.80}: must not contain NUL")
    try:
        size = len(mid.encode("utf-8"))
    except UnicodeEncodeError:
        raise MessageError(f"message id {mid!r:.80}: not valid Unicode") from None
    if size > MAX_ID_BYTES:
        raise MessageError(f"message id {mid!r:.80}: {size} UTF-8 bytes, over {MAX_ID_BYTES}")


def _check_role_author(role: str, author: str | None, limits: MessageLimits) -> None:
    if not role or len(role) > limits.max_role:
        raise MessageError(f"role {role!r:.80}: must be 1..{limits.max_role} characters")
    if author is not None and not 0 < len(author) <= limits.max_author:
        raise MessageError(f"author {author!r:.80}: must be 1..{limits.max_author} characters")
    for name, value in (("role", role), ("author", author)):
        if value is not None and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: it could be neither stored nor sent
                raise MessageError(f"{name} {value!r:.80}: not valid Unicode (a lone "
                                   "surrogate)") from None


def _check_text(text: str, limits: MessageLimits) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise MessageError("message text is not valid Unicode (a lone surrogate)") from None
    if size > limits.max_text_bytes:
        raise MessageError(
            f"message text of {size} bytes is over the limit of {limits.max_text_bytes}")


def _check_at_seq(at: int | None, seq: int | None) -> None:
    for name, n in (("at", at), ("seq", seq)):
        if n is not None and not 0 <= n < 2**63:
            raise MessageError(f"{name} {n}: must be in 0..2^63-1")


def _check_group_room(view: HistoryView, group: str, limits: MessageLimits) -> None:
    if len(view.members(group)) >= limits.max_versions:
        raise MessageError(f"message {group!r} has {limits.max_versions} versions, the limit")
