"""A conversation's message history: a map message id -> message state, plus one LWW choice
per version group (specs/messages.md §4).

Join is pointwise, per message id and per group, so storage can keep and join one message (or
one choice) at a time. The delta mutators (post, regenerate, append, edit, switch, delete)
return a History holding only what they change; states and deltas share one join (Almeida,
Shoker, Baquero, "Delta State Replicated Data Types", 2018). What the history *shows* -- the
visible path, the versions of a message -- is a function of the state alone
(history_tree.py). Pure: no I/O, no clock reads; callers pass fresh HLC stamps in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .history_tree import Tree
from .hlc import Hlc
from .lww import Lww, Stamp
from .message import (
    DEFAULT_MESSAGE_LIMITS,
    Append,
    Header,
    MessageError,
    MessageLimits,
    MessageState,
)

__all__ = ["History", "versions", "visible_path"]


@dataclass(frozen=True, slots=True)
class History:
    """A state or a delta of one conversation's messages. Canonical: no bottom message state
    and no bottom choice is stored, so equality is structural (§4.1). Build with `make`."""

    messages: Mapping[str, MessageState] = field(default_factory=dict)
    choices: Mapping[str, Lww] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        messages: Mapping[str, MessageState] | None = None,
        choices: Mapping[str, Lww] | None = None,
    ) -> History:
        return cls(
            {mid: m for mid, m in (messages or {}).items() if not m.is_bottom()},
            {g: c for g, c in (choices or {}).items() if not c.is_bottom()},
        )

    # -- lattice ---------------------------------------------------------------------------

    @classmethod
    def bottom(cls) -> History:
        return cls()

    def is_bottom(self) -> bool:
        return not self.messages and not self.choices

    def join(self, other: History) -> History:
        # No normalizing pass: a join of states that are not bottom is not bottom.
        messages = dict(self.messages)
        for mid, m in other.messages.items():
            mine = messages.get(mid)
            messages[mid] = m if mine is None else mine.join(m)
        choices = dict(self.choices)
        for group, c in other.choices.items():
            chosen = choices.get(group)
            choices[group] = c if chosen is None else chosen.join(c)
        return History(messages, choices)

    def novel(self, delta: History) -> History:
        """The part of `delta` that changes this state (§4.3): self ⊔ it == self ⊔ delta."""
        messages = {}
        for mid, m in delta.messages.items():
            mine = self.messages.get(mid)
            part = m if mine is None else mine.novel(m)
            if not part.is_bottom():
                messages[mid] = part
        choices = {}
        for group, c in delta.choices.items():
            chosen = self.choices.get(group)
            if chosen is None or chosen.join(c) != chosen:
                choices[group] = c
        return History(messages, choices)

    @property
    def value(self) -> tuple[str, ...]:
        return tuple(visible_path(self))

    # -- reading ---------------------------------------------------------------------------

    def message(self, mid: str) -> MessageState:
        return self.messages.get(mid, MessageState.bottom())

    def stamps(self) -> Iterator[Stamp]:
        """Every hybrid-clock stamp in the state: receivers advance their clock past them."""
        for m in self.messages.values():
            yield from m.stamps()
        for c in self.choices.values():
            yield c.stamp

    def max_clock(self) -> Hlc | None:
        best = max(((s.wall, s.counter) for s in self.stamps()), default=None)
        return None if best is None else Hlc(*best)

    def max_at(self) -> int:
        """The latest message time (`at`, ms) in the state, 0 if none: bounded like a clock."""
        return max((m.header.at for m in self.messages.values() if m.header), default=0)

    # -- delta mutators (specs/messages.md §5) -----------------------------------------------

    def post(
        self,
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
    ) -> History:
        """A new message: after the newest visible one, or after `reply_to` (a branch there if
        it already has a visible continuation). Re-posting an id is a no-op if its fields
        match and refused if they differ (§5.1). `at` defaults to the stamp's wall."""
        _check_id(mid, limits)
        _check_role_author(role, author, limits)
        _check_text(text, limits)
        _check_at_seq(at, seq)
        existing = self.message(mid)
        if existing.header is not None:
            _same_post_or_refuse(mid, existing.header, existing.deleted, role, author, at, seq,
                                 reply_to)
            return History()
        tree = Tree(self.messages, self.choices)
        choices: dict[str, Lww] = {}
        origin = None
        if reply_to is None:
            path = tree.visible_path()
            parent = path[-1] if path else None
        else:
            if reply_to not in tree.headers:
                raise MessageError(f"reply_to {reply_to!r}: no such message")
            parent = reply_to
            choices = _activation(tree, reply_to, stamp)
            shown = Tree(self.messages, {**self.choices, **choices})
            following = shown.visible_children(reply_to)
            if following:
                origin = shown.group(following[0])
                assert origin is not None
                _check_group_room(shown, origin, limits)
                choices[origin] = Lww(stamp, mid)
        header = Header(parent, origin, role, author, stamp.wall if at is None else at, seq,
                        stamp)
        return History({mid: MessageState(header, Lww(stamp, text))}, choices)

    def regenerate(
        self,
        of: str,
        mid: str,
        text: str,
        stamp: Stamp,
        *,
        role: str | None = None,
        at: int | None = None,
        limits: MessageLimits = DEFAULT_MESSAGE_LIMITS,
    ) -> History:
        """A new version `mid` of message `of` (same parent, same group), made active along
        with its path (§5.2). Role and author default to those of `of`."""
        _check_id(mid, limits)
        _check_text(text, limits)
        _check_at_seq(at, None)
        tree = Tree(self.messages, self.choices)
        old = tree.headers.get(of)
        group = tree.group(of)
        if old is None or group is None:
            raise MessageError(f"regenerate {of!r}: no such message")
        role = old.role if role is None else role
        _check_role_author(role, None, limits)
        existing = self.message(mid).header
        if existing is not None:
            if existing.parent == old.parent and existing.origin == group and (
                    existing.role == role):
                return History()
            raise MessageError(f"message {mid!r} exists and is not a version of {of!r}")
        _check_group_room(tree, group, limits)
        choices = {} if old.parent is None else _activation(tree, old.parent, stamp)
        choices[group] = Lww(stamp, mid)
        header = Header(old.parent, group, role, old.author,
                        stamp.wall if at is None else at, None, stamp)
        return History({mid: MessageState(header, Lww(stamp, text))}, choices)

    def append(
        self, mid: str, text: str, stamp: Stamp, limits: MessageLimits = DEFAULT_MESSAGE_LIMITS
    ) -> History:
        """Text added at the end of `mid`; the delta holds only that text (§5.3). Past
        `max_appends` appends on one base, the delta is an edit to the whole text instead."""
        m = self._live(mid, "append to")
        if not text:
            return History()
        whole = m.text + text
        _check_text(whole, limits)
        if len(m.current_appends()) >= limits.max_appends:
            return History({mid: MessageState(base=Lww(stamp, whole))})
        return History({mid: MessageState(appends=frozenset([Append(stamp, m.base.stamp, text)]))})

    def edit(
        self, mid: str, text: str, stamp: Stamp, limits: MessageLimits = DEFAULT_MESSAGE_LIMITS
    ) -> History:
        """A new base text for `mid`; the appends made on the old base go with it (§5.4)."""
        self._live(mid, "edit")
        _check_text(text, limits)
        return History({mid: MessageState(base=Lww(stamp, text))})

    def switch(self, mid: str, stamp: Stamp) -> History:
        """Make `mid` active in its group and every message on its path active in theirs, so
        that `mid` is visible (§5.5); the delta holds only the choices that change."""
        tree = Tree(self.messages, self.choices)
        if mid not in tree.headers:
            raise MessageError(f"switch to {mid!r}: no such message")
        return History({}, _activation(tree, mid, stamp))

    def delete(self, mid: str) -> History:
        """Delete `mid`, for good: its text, appends and author leave the state (§5.6)."""
        m = self.message(mid)
        if m.header is None:
            raise MessageError(f"delete {mid!r}: no such message")
        if m.deleted:
            return History()
        return History({mid: MessageState(deleted=True)})

    def _live(self, mid: str, what: str) -> MessageState:
        m = self.message(mid)
        if m.header is None:
            raise MessageError(f"{what} {mid!r}: no such message")
        if m.deleted:
            raise MessageError(f"{what} {mid!r}: the message is deleted")
        return m


def visible_path(history: History) -> list[str]:
    """The visible messages, oldest first by (created stamp, id) (specs/messages.md §3.4)."""
    return Tree(history.messages, history.choices).visible_path()


def versions(history: History, mid: str) -> list[str]:
    """The version group of `mid`, oldest first by (created stamp, id); [] if `mid` is not
    known. `mid`'s index in it is its version number (§3.5)."""
    tree = Tree(history.messages, history.choices)
    group = tree.group(mid)
    return [] if group is None else list(tree.members(group))


def _activation(tree: Tree, mid: str, stamp: Stamp) -> dict[str, Lww]:
    """The choices that make `mid` and each known ancestor active in their groups."""
    out: dict[str, Lww] = {}
    for node in reversed(tree.path_to_root(mid)):
        group = tree.group(node)
        if group is not None and tree.active(group) != node:
            out[group] = Lww(stamp, node)
    return out


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
    # A retried send is one message (§5.1): compare the immutable fields the caller gave.
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


def _check_id(mid: str, limits: MessageLimits) -> None:
    if not mid or len(mid) > limits.max_id:
        raise MessageError(f"message id {mid!r}: must be 1..{limits.max_id} characters")


def _check_role_author(role: str, author: str | None, limits: MessageLimits) -> None:
    if not role or len(role) > limits.max_role:
        raise MessageError(f"role {role!r}: must be 1..{limits.max_role} characters")
    if author is not None and not 0 < len(author) <= limits.max_author:
        raise MessageError(f"author {author!r}: must be 1..{limits.max_author} characters")


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


def _check_group_room(tree: Tree, group: str, limits: MessageLimits) -> None:
    if len(tree.members(group)) >= limits.max_versions:
        raise MessageError(
            f"message {group!r} has {limits.max_versions} versions, the limit")
